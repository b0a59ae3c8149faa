"""Activations as elementwise builtins: Selu, ThresholdedRelu, Shrink as Where selections, Softsign.

onnx2torch maps Selu only with PyTorch's fixed alpha/gamma ("alpha parameter must be
1.6732631921768188, not 2.0" on ONNX's node test) and has no ThresholdedRelu or Shrink; ONNX ships
no function body for them at the opsets exporters write, so `expand-*` cannot help. Each is a
comparison and a Where, which every backend converts. NaN takes the branch its comparison gives,
as in onnxruntime's kernels (x > t is false for NaN).
"""

from __future__ import annotations

import onnx
from onnxscript.rewriter import pattern

from converters.passes._rewrite import apply_rules, const, is_float
from converters.passes.registry import register


def _attrs(y) -> object:
    return y.producer().attributes


def _selu(op, x, y):
    a = _attrs(y)
    alpha = a.get_float("alpha", 1.67326319217681884765625)
    gamma = a.get_float("gamma", 1.05070102214813232421875)
    dt = x.dtype
    # onnxruntime: x <= 0 ? gamma * (alpha * exp(x) - alpha) : gamma * x
    neg = op.Sub(op.Mul(const(op, alpha, dt), op.Exp(x)), const(op, alpha, dt))
    return op.Mul(const(op, gamma, dt), op.Where(op.Greater(x, const(op, 0.0, dt)), x, neg))


def _thresholded_relu(op, x, y):
    alpha = _attrs(y).get_float("alpha", 1.0)
    dt = x.dtype
    return op.Where(op.Greater(x, const(op, alpha, dt)), x, const(op, 0.0, dt))


def _shrink(op, x, y):
    a = _attrs(y)
    bias, lambd = a.get_float("bias", 0.0), a.get_float("lambd", 0.5)
    dt = x.dtype
    above = op.Where(op.Greater(x, const(op, lambd, dt)), op.Sub(x, const(op, bias, dt)), const(op, 0.0, dt))
    return op.Where(op.Less(x, const(op, -lambd, dt)), op.Add(x, const(op, bias, dt)), above)


def _rule(op_type: str, rewrite) -> pattern.RewriteRule:
    return pattern.RewriteRule(
        lambda op, x: getattr(op, op_type)(x, _allow_other_attributes=True, _outputs=["y"]),
        rewrite,
        lambda _ctx, x, **_: is_float(x),
    )


def _softsign(op, x, y):
    # x / (1 + |x|): LiteRT has Softsign only as Flex
    return op.Div(x, op.Add(const(op, 1.0, x.dtype), op.Abs(x)))


@register("decompose-Softsign")
def decompose_softsign(model: onnx.ModelProto) -> bool:
    """Softsign -> x / (1 + |x|)."""
    return apply_rules(model, [_rule("Softsign", _softsign)], {"Softsign"})


@register("decompose-Selu")
def decompose_selu(model: onnx.ModelProto) -> bool:
    """Selu -> gamma * Where(x > 0, x, alpha * exp(x) - alpha), any alpha/gamma."""
    return apply_rules(model, [_rule("Selu", _selu)], {"Selu"})


@register("decompose-ThresholdedRelu")
def decompose_thresholded_relu(model: onnx.ModelProto) -> bool:
    """ThresholdedRelu -> Where(x > alpha, x, 0)."""
    return apply_rules(model, [_rule("ThresholdedRelu", _thresholded_relu)], {"ThresholdedRelu"})


@register("decompose-Shrink")
def decompose_shrink(model: onnx.ModelProto) -> bool:
    """Shrink -> Where(x < -lambd, x + bias, Where(x > lambd, x - bias, 0)) (float inputs)."""
    return apply_rules(model, [_rule("Shrink", _shrink)], {"Shrink"})
