"""Ops that select by position, as comparisons against a constant index ramp: Hardmax, OneHot, Trilu.

onnx2torch has no converter for any of them (ONNX's node tests through coremltools 9: "unsupported
op"). Each becomes Equal/Where against a constant arange or triangle, which needs the selecting
axis to be static and the op's parameters (OneHot's depth and values, Trilu's k) to be constants;
otherwise the op is left alone and the backend's own verdict stands.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.rewriter import pattern

from converters.passes._rewrite import apply_rules, const, int64s, opset_version
from converters.passes.registry import register


def _const(v: ir.Value | None) -> np.ndarray | None:
    t = None if v is None else ir.convenience.get_const_tensor(v)
    return None if t is None else t.numpy()


def _static_dim(x: ir.Value, axis: int) -> int | None:
    if x.shape is None:
        return None
    d = x.shape[axis]
    return d if isinstance(d, int) else None


def _ramp(n: int, rank: int, axis: int) -> np.ndarray:
    """0..n-1 laid along `axis` of a rank-`rank` tensor (1 elsewhere), for broadcasting."""
    shape = [1] * rank
    shape[axis] = n
    return np.arange(n, dtype=np.int64).reshape(shape)


# -- Hardmax (opset >= 13: one axis; earlier opsets coerce to 2-D, a different op) -------------


def _hardmax_axis(x: ir.Value, y: ir.Value) -> int | None:
    if x.shape is None:
        return None
    rank = len(x.shape)
    axis = y.producer().attributes.get_int("axis", -1)
    return axis + rank if axis < 0 else axis


def _hardmax_check(_ctx, x, y) -> bool:
    axis = _hardmax_axis(x, y)
    return axis is not None and _static_dim(x, axis) is not None and x.dtype is not None


def _hardmax(op, x, y):
    axis = _hardmax_axis(x, y)
    rank = len(x.shape)
    first = op.ArgMax(x, axis=axis, keepdims=1)  # the first maximum, as Hardmax picks
    hit = op.Equal(first, op.Constant(value=ir.tensor(_ramp(_static_dim(x, axis), rank, axis))))
    return op.Cast(hit, to=x.dtype)


@register("decompose-Hardmax")
def decompose_hardmax(model: onnx.ModelProto) -> bool:
    """Hardmax -> Cast(ArgMax(x, axis, keepdims) == arange along axis) (opset >= 13, static axis)."""
    if opset_version(model) < 13:
        return False
    rule = pattern.RewriteRule(
        lambda op, x: op.Hardmax(x, _allow_other_attributes=True, _outputs=["y"]), _hardmax, _hardmax_check
    )
    return apply_rules(model, [rule], {"Hardmax"})


# -- OneHot -------------------------------------------------------------------------------------


def _onehot_parts(indices, depth, values, y) -> tuple[int, int, np.ndarray] | None:
    d, v = _const(depth), _const(values)
    if d is None or v is None or v.size != 2 or indices.shape is None:
        return None
    out_rank = len(indices.shape) + 1
    axis = y.producer().attributes.get_int("axis", -1)
    return int(d.reshape(())), axis + out_rank if axis < 0 else axis, v


def _onehot_check(_ctx, indices, depth, values, y) -> bool:
    return _onehot_parts(indices, depth, values, y) is not None


def _onehot(op, indices, depth, values, y):
    n, axis, v = _onehot_parts(indices, depth, values, y)
    idx = indices if indices.dtype == ir.DataType.INT64 else op.Cast(indices, to=ir.DataType.INT64)
    # -depth..-1 count from the end; anything outside [-depth, depth) matches nothing: all off
    idx = op.Where(op.Less(idx, int64s(op, [0])), op.Add(idx, int64s(op, [n])), idx)
    hit = op.Equal(
        op.Unsqueeze(idx, int64s(op, [axis])),
        op.Constant(value=ir.tensor(_ramp(n, len(indices.shape) + 1, axis))),
    )
    on = op.Constant(value=ir.tensor(np.asarray(v.reshape(-1)[1])))
    off = op.Constant(value=ir.tensor(np.asarray(v.reshape(-1)[0])))
    return op.Where(hit, on, off)


@register("decompose-OneHot")
def decompose_onehot(model: onnx.ModelProto) -> bool:
    """OneHot with constant depth and values -> Where(Unsqueeze(idx) == arange(depth), on, off)."""
    rule = pattern.RewriteRule(
        lambda op, indices, depth, values: op.OneHot(
            indices, depth, values, _allow_other_attributes=True, _outputs=["y"]
        ),
        _onehot,
        _onehot_check,
    )
    return apply_rules(model, [rule], {"OneHot"})


# -- Trilu --------------------------------------------------------------------------------------


def _triangle(x: ir.Value, k: ir.Value | None, y: ir.Value) -> np.ndarray | None:
    if x.shape is None or len(x.shape) < 2:
        return None
    rows, cols = _static_dim(x, -2), _static_dim(x, -1)
    kk = np.zeros(()) if k is None else _const(k)
    if rows is None or cols is None or kk is None:
        return None
    ones = np.ones((rows, cols), dtype=bool)
    upper = y.producer().attributes.get_int("upper", 1)
    return np.triu(ones, int(kk)) if upper else np.tril(ones, int(kk))


def _trilu_check(_ctx, x, y, k=None) -> bool:
    return x.dtype is not None and _triangle(x, k, y) is not None


def _trilu(op, x, y, k=None):
    mask = op.Constant(value=ir.tensor(_triangle(x, k, y)))
    return op.Where(mask, x, const(op, 0, x.dtype))


@register("trilu-to-where")
def trilu_to_where(model: onnx.ModelProto) -> bool:
    """Trilu with static matrix dims and constant k -> Where(constant triangle, x, 0)."""
    rules = [
        pattern.RewriteRule(
            lambda op, x, k: op.Trilu(x, k, _allow_other_attributes=True, _outputs=["y"]),
            _trilu,
            _trilu_check,
        ),
        pattern.RewriteRule(
            lambda op, x: op.Trilu(x, _allow_other_attributes=True, _outputs=["y"]), _trilu, _trilu_check
        ),
    ]
    return apply_rules(model, rules, {"Trilu"})
