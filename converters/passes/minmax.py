"""Rewrites to Max / Min / ReduceMax that backends convert where the original op fails.

- clip-dynamic-bounds: Clip whose min/max are computed tensors (not constants) -> two Where(Less)
  selections, exactly ONNX's min(max(x, lo), hi) (min > max gives max, as the spec says; a missing
  bound is the type's limit). onnx2torch refuses dynamic bounds ("Dynamic value of min/max is not
  implemented").
- globalmaxpool-to-reducemax: GlobalMaxPool -> ReduceMax over the spatial axes, keepdims=1
  (onnx2torch has no GlobalMaxPool converter).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.rewriter import pattern

from converters.passes._rewrite import apply_rules, const, int64s, opset_version
from converters.passes.registry import register


def _dynamic(v: ir.Value | None) -> bool:
    return v is not None and ir.convenience.get_const_tensor(v) is None


def _clip_check(_ctx, x, lo=None, hi=None, **_) -> bool:
    return x.dtype is not None and (_dynamic(lo) or _dynamic(hi))


def _limit(op, dtype: ir.DataType, which: str) -> ir.Value:
    """A missing bound is the type's lowest/max value (the spec's default): Clip maps -inf to
    -FLT_MAX when it has no min, so the rewrite must too."""
    np_type = dtype.numpy()
    info = np.finfo(np_type) if np.issubdtype(np_type, np.floating) else np.iinfo(np_type)
    return const(op, info.min if which == "min" else info.max, dtype)


def _clip(op, x, lo=None, hi=None, **_):
    # Where/Less, not Max/Min: onnx2torch turns a two-input Max/Min into broadcast_to + stack,
    # and coremltools has no broadcast_to (measured: "cannot convert the TorchScript op
    # 'broadcast_to'"); torch.where broadcasts by itself. NaN stays NaN (x < lo is false).
    lo = lo if lo is not None else _limit(op, x.dtype, "min")
    hi = hi if hi is not None else _limit(op, x.dtype, "max")
    y = op.Where(op.Less(x, lo), lo, x)
    return op.Where(op.Less(hi, y), hi, y)


_CLIP_RULES = [
    pattern.RewriteRule(lambda op, x, lo, hi: op.Clip(x, lo, hi), _clip, _clip_check),
    pattern.RewriteRule(lambda op, x, hi: op.Clip(x, None, hi), _clip, _clip_check),
    pattern.RewriteRule(lambda op, x, lo: op.Clip(x, lo, None), _clip, _clip_check),
    pattern.RewriteRule(lambda op, x, lo: op.Clip(x, lo), _clip, _clip_check),
]


@register("clip-dynamic-bounds")
def clip_dynamic_bounds(model: onnx.ModelProto) -> bool:
    """Clip with non-constant min/max -> Where(x < min, min, x), then the same for max."""
    return apply_rules(model, _CLIP_RULES, {"Clip"})


def _gmp_check(_ctx, x) -> bool:
    return x.shape is not None and len(x.shape) >= 3


def _gmp_rule(opset: int) -> pattern.RewriteRule:
    def rewrite(op, x):
        axes = list(range(2, len(x.shape)))
        if opset >= 18:  # ReduceMax takes axes as an input from opset 18 on
            return op.ReduceMax(x, int64s(op, axes), keepdims=1)
        return op.ReduceMax(x, axes=axes, keepdims=1)

    return pattern.RewriteRule(lambda op, x: op.GlobalMaxPool(x), rewrite, _gmp_check)


@register("globalmaxpool-to-reducemax")
def globalmaxpool_to_reducemax(model: onnx.ModelProto) -> bool:
    """GlobalMaxPool -> ReduceMax(axes=spatial, keepdims=1); needs the input's rank."""
    return apply_rules(model, [_gmp_rule(opset_version(model))], {"GlobalMaxPool"})


# Two-input Sum is Add. onnx2torch converts Sum with broadcast_to + stack like Max/Min, which
# coremltools cannot convert (measured: ONNX's Gelu body, "Concat got 0 values").
_SUM_RULES = [pattern.RewriteRule(lambda op, a, b: op.Sum(a, b), lambda op, a, b: op.Add(a, b))]


@register("sum-to-add")
def sum_to_add(model: onnx.ModelProto) -> bool:
    """Sum of two inputs -> Add (the same single rounding)."""
    return apply_rules(model, _SUM_RULES, {"Sum"})


def _select(op, cmp: str, a, b):
    # a wins where it compares true or is NaN: NaN propagates from either side, as in numpy's
    # maximum/minimum (b NaN: the comparison is false and a == a holds, so b is taken)
    keep_a = op.Or(getattr(op, cmp)(a, b), op.Not(op.Equal(a, a)))
    return op.Where(keep_a, a, b)


def _variadic_rules(op_type: str, cmp: str) -> list[pattern.RewriteRule]:
    def chain(op, *xs):
        y = xs[0]
        for x in xs[1:]:
            y = _select(op, cmp, y, x)
        return y

    node = lambda op, *xs: getattr(op, op_type)(*xs)  # noqa: E731
    # Patterns bind variables by parameter name, so each arity is spelled out; the longest first,
    # so a 3-input node is never taken by the 2-input rule.
    return [
        pattern.RewriteRule(
            lambda op, a, b, c, d: node(op, a, b, c, d), lambda op, a, b, c, d: chain(op, a, b, c, d)
        ),
        pattern.RewriteRule(lambda op, a, b, c: node(op, a, b, c), lambda op, a, b, c: chain(op, a, b, c)),
        pattern.RewriteRule(lambda op, a, b: node(op, a, b), lambda op, a, b: chain(op, a, b)),
    ]


@register("minmax-to-where")
def minmax_to_where(model: onnx.ModelProto) -> bool:
    """Max/Min of 2-4 inputs -> chained Where(a > b or a is NaN, a, b) (Less for Min).

    onnx2torch turns Max/Min into broadcast_to + stack, which coremltools cannot convert;
    torch.where broadcasts by itself."""
    return apply_rules(
        model, _variadic_rules("Max", "Greater") + _variadic_rules("Min", "Less"), {"Max", "Min"}
    )
