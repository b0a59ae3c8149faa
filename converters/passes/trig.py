"""decompose-<Op> for the inverse trigonometric and hyperbolic functions and Tan.

onnx2tf lowers them to TensorFlow ops that TFLite has only as Flex (SELECT_TF_OPS), which LiteRT
cannot run; onnx2torch has no converter for the hyperbolic ones. Rewritten with the cancellation-free
forms of `_math` so relative accuracy holds near 0 and at the ends of each domain.
"""

from __future__ import annotations

import math

import onnx
import onnx_ir as ir
from onnxscript.rewriter import pattern

from converters.passes import _math as m
from converters.passes._rewrite import apply_rules, const, in_float, is_float
from converters.passes.registry import register


def _asin(op, x: ir.Value, dt: ir.DataType) -> ir.Value:
    return m.copysign(op, dt, m.asin_abs(op, dt, op.Abs(x)), x)


def _acos(op, x: ir.Value, dt: ir.DataType) -> ir.Value:
    # Cephes acosf: 2 asin(sqrt((1 - x) / 2)) for x > 0.5, pi - that of -x for x < -0.5,
    # pi/2 - asin(x) between; never pi/2 - asin(x) near +-1, where it would cancel.
    a = op.Abs(x)
    big = op.Greater(a, const(op, 0.5, dt))
    half = const(op, 0.5, dt)
    t = op.Where(big, op.Sqrt(op.Mul(op.Sub(const(op, 1.0, dt), a), half)), x)
    p = m.asin_small(op, dt, t)
    twice = op.Add(p, p)
    outer = op.Where(op.Less(x, const(op, 0.0, dt)), op.Sub(const(op, math.pi, dt), twice), twice)
    return op.Where(big, outer, op.Sub(const(op, math.pi / 2, dt), p))


def _atan(op, x: ir.Value, dt: ir.DataType) -> ir.Value:
    return m.copysign(op, dt, m.atan_abs(op, dt, op.Abs(x)), x)


def _asinh(op, x: ir.Value, dt: ir.DataType) -> ir.Value:
    # asinh(a) = log1p(a + a^2 / (1 + sqrt(1 + a^2))); for a > 1e8, a^2 would lose 1 (or overflow)
    a = op.Abs(x)
    one = const(op, 1.0, dt)
    a2 = op.Mul(a, a)
    small = m.log1p(op, dt, op.Add(a, op.Div(a2, op.Add(one, op.Sqrt(op.Add(one, a2))))))
    large = op.Add(op.Log(a), const(op, math.log(2.0), dt))
    return m.copysign(op, dt, op.Where(op.Greater(a, const(op, 1e8, dt)), large, small), x)


def _acosh(op, x: ir.Value, dt: ir.DataType) -> ir.Value:
    # acosh(x) = log1p(u + sqrt(u (u + 2))) with u = x - 1 (exact near 1); log(2x) for x > 1e8
    one = const(op, 1.0, dt)
    u = op.Sub(x, one)
    small = m.log1p(op, dt, op.Add(u, op.Sqrt(op.Mul(u, op.Add(u, const(op, 2.0, dt))))))
    large = op.Add(op.Log(x), const(op, math.log(2.0), dt))
    return op.Where(op.Greater(x, const(op, 1e8, dt)), large, small)


def _atanh(op, x: ir.Value, dt: ir.DataType) -> ir.Value:
    # atanh(x) = (log1p(x) - log1p(-x)) / 2: no cancellation near 0, +-inf at +-1, NaN beyond
    return op.Mul(op.Sub(m.log1p(op, dt, x), m.log1p(op, dt, op.Neg(x))), const(op, 0.5, dt))


def _sinh(op, x: ir.Value, dt: ir.DataType) -> ir.Value:
    # sinh(a) = (e + e / (e + 1)) / 2 with e = expm1(a): exact near 0; exp(a)/2 once exp(-a) is
    # below float precision (a > 20)
    a = op.Abs(x)
    e = m.expm1(op, dt, a)  # inf/NaN for large a, but Where then takes the other branch
    small = op.Mul(op.Add(e, op.Div(e, op.Add(e, const(op, 1.0, dt)))), const(op, 0.5, dt))
    return m.copysign(op, dt, op.Where(op.Greater(a, const(op, 20.0, dt)), m.half_exp(op, dt, a), small), x)


def _cosh(op, x: ir.Value, dt: ir.DataType) -> ir.Value:
    a = op.Abs(x)
    return op.Add(m.half_exp(op, dt, a), op.Mul(op.Exp(op.Neg(a)), const(op, 0.5, dt)))


def _tan(op, x: ir.Value, dt: ir.DataType) -> ir.Value:
    return op.Div(op.Sin(x), op.Cos(x))


_DECOMPOSE = {
    "Acos": (_acos, "Cephes argument reduction + odd polynomial; Where, Sqrt, Mul, Add"),
    "Asin": (_asin, "Cephes argument reduction + odd polynomial; Where, Sqrt, Mul, Add"),
    "Atan": (_atan, "reduction to |t| <= tan(pi/8) + odd polynomial"),
    "Acosh": (_acosh, "log1p(u + sqrt(u (u + 2))), u = x - 1"),
    "Asinh": (_asinh, "log1p(a + a^2 / (1 + sqrt(1 + a^2))) with the sign of x"),
    "Atanh": (_atanh, "(log1p(x) - log1p(-x)) / 2"),
    "Sinh": (_sinh, "expm1-based, exp(|x|)/2 for |x| > 20"),
    "Cosh": (_cosh, "(exp(|x|) + exp(-|x|)) / 2 without early overflow"),
    "Tan": (_tan, "Sin / Cos"),
}


def _make(op_type: str, build, how: str) -> None:
    rules = [
        pattern.RewriteRule(
            lambda op, x: getattr(op, op_type)(x),
            lambda op, x: in_float(op, x, build),
            lambda _ctx, x: is_float(x),
        )
    ]

    def apply(model: onnx.ModelProto) -> bool:
        return apply_rules(model, rules, {op_type})

    register(f"decompose-{op_type}", doc=f"{op_type} -> {how}")(apply)


for _op, (_build, _how) in _DECOMPOSE.items():
    _make(_op, _build, _how)
