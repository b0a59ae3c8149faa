"""decompose-IsInf: IsInf as comparisons beyond the largest finite value.

coremltools has no converter for torch.isinf, and onnx2tf's lowering came out wrong in LiteRT
(all false on ONNX's node test; so did `x == inf`: an infinite constant does not survive into the
TFLite model intact). |x| > FLT_MAX holds exactly for +-inf in IEEE arithmetic (NaN compares
false, as IsInf says), with a finite constant; `detect_negative` / `detect_positive` pick the sides.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnxscript.rewriter import pattern

from converters.passes._rewrite import apply_rules, const, is_float
from converters.passes.registry import register


def _isinf(op, x, detect_negative: int = 1, detect_positive: int = 1):
    dt = x.dtype
    big = float(np.finfo(dt.numpy()).max)
    if detect_negative and detect_positive:
        return op.Greater(op.Abs(x), const(op, big, dt))
    if detect_positive:
        return op.Greater(x, const(op, big, dt))
    if detect_negative:
        return op.Less(x, const(op, -big, dt))
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
