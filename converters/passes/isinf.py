"""decompose-IsInf: IsInf as comparisons with +-inf.

coremltools has no converter for torch.isinf, and onnx2tf's lowering came out wrong in LiteRT
(all false on ONNX's node test). x == +inf and x == -inf are exact in IEEE arithmetic (NaN
compares false, as IsInf says); `detect_negative` / `detect_positive` pick the sides.
"""

from __future__ import annotations

import onnx
from onnxscript.rewriter import pattern

from converters.passes._rewrite import apply_rules, const, is_float
from converters.passes.registry import register


def _isinf(op, x, detect_negative: int = 1, detect_positive: int = 1):
    dt = x.dtype
    if detect_negative and detect_positive:
        return op.Equal(op.Abs(x), const(op, float("inf"), dt))
    if detect_positive:
        return op.Equal(x, const(op, float("inf"), dt))
    if detect_negative:
        return op.Equal(x, const(op, float("-inf"), dt))
    return op.Less(x, const(op, float("-inf"), dt))  # nothing is below -inf: all false


def _value(attr, default: int = 1) -> int:
    return default if attr is None else int(attr.value)


# A pattern's attribute only matches a node that writes it, so one rule per combination, applied
# in this order: a node with both is rewritten before the rules that name fewer could take it.
_RULE_SETS = [
    [
        pattern.RewriteRule(
            lambda op, x, neg, pos: op.IsInf(x, detect_negative=neg, detect_positive=pos),
            lambda op, x, neg, pos: _isinf(op, x, _value(neg), _value(pos)),
            lambda _ctx, x, **_: is_float(x),
        )
    ],
    [
        pattern.RewriteRule(
            lambda op, x, neg: op.IsInf(x, detect_negative=neg),
            lambda op, x, neg: _isinf(op, x, _value(neg), 1),
            lambda _ctx, x, **_: is_float(x),
        )
    ],
    [
        pattern.RewriteRule(
            lambda op, x, pos: op.IsInf(x, detect_positive=pos),
            lambda op, x, pos: _isinf(op, x, 1, _value(pos)),
            lambda _ctx, x, **_: is_float(x),
        )
    ],
    [
        pattern.RewriteRule(
            lambda op, x: op.IsInf(x), lambda op, x: _isinf(op, x), lambda _ctx, x: is_float(x)
        )
    ],
]


@register("decompose-IsInf", {"tflite", "tfjs", "coreml"})
def decompose_isinf(model: onnx.ModelProto) -> bool:
    """IsInf -> Equal(Abs(x), inf) (or the side asked for)."""
    changed = False
    for rules in _RULE_SETS:
        changed = apply_rules(model, rules, {"IsInf"}) or changed
    return changed
