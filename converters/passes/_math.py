"""Accurate elementary functions built from ops every backend has (Add, Mul, Div, Sqrt, Log, Exp,
Abs, Where, Less), for rewrite rules. Each helper emits nodes through an onnxscript builder `op`
and keeps the element type of its input.

The classic cancellation-free forms are used (Kahan's log1p / expm1 tricks, Cephes' argument
reductions), so results keep their relative accuracy near 0 and at the ends of the domain: a pass
must not change what the model computes, and tiny inputs are common (activations near 0).
"""

from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter.pattern import OpsetPatternBuilder as Op

from converters.passes._rewrite import const


def copysign(op: Op, dt: ir.DataType, magnitude: ir.Value, sign_of: ir.Value) -> ir.Value:
    """|magnitude| carrying the sign of `sign_of` (for odd functions computed on |x|)."""
    return op.Where(op.Less(sign_of, const(op, 0.0, dt)), op.Neg(magnitude), magnitude)


def log1p(op: Op, dt: ir.DataType, u: ir.Value) -> ir.Value:
    """log(1 + u) accurate for tiny u (Kahan): log(w) * u / (w - 1) with w = 1 + u, u where w == 1."""
    one = const(op, 1.0, dt)
    w = op.Add(one, u)
    return op.Where(op.Equal(w, one), u, op.Mul(op.Log(w), op.Div(u, op.Sub(w, one))))


def expm1(op: Op, dt: ir.DataType, u: ir.Value) -> ir.Value:
    """exp(u) - 1 accurate for tiny u (Kahan): (w - 1) * u / log(w) with w = exp(u).

    Only for u where exp(u) is finite (callers route large u elsewhere: inf * 0 is NaN)."""
    one = const(op, 1.0, dt)
    w = op.Exp(u)
    wm1 = op.Sub(w, one)
    return op.Where(op.Equal(w, one), u, op.Mul(wm1, op.Div(u, op.Log(w))))


def poly(op: Op, dt: ir.DataType, z: ir.Value, coeffs: list[float]) -> ir.Value:
    """c0 + c1 z + c2 z^2 + ... by Horner's rule."""
    acc = const(op, coeffs[-1], dt)
    for c in reversed(coeffs[:-1]):
        acc = op.Add(op.Mul(acc, z), const(op, c, dt))
    return acc


# Cephes asinf: asin(t) = t + t^3 P(t^2) for |t| <= 0.5 (relative error ~2.5e-7 in float32)
_ASIN_P = [1.6666752422e-1, 7.4953002686e-2, 4.5470025998e-2, 2.4181311049e-2, 4.2163199048e-2]
# Cephes atanf: atan(t) = t + t^3 P(t^2) for |t| <= tan(pi/8)
_ATAN_P = [-3.33329491539e-1, 1.99777106478e-1, -1.38776856032e-1, 8.05374449538e-2]
_TAN_3PI_8 = 2.414213562373095
_TAN_PI_8 = 0.4142135623730950


def _odd_poly(op: Op, dt: ir.DataType, t: ir.Value, coeffs: list[float]) -> ir.Value:
    z = op.Mul(t, t)
    return op.Add(t, op.Mul(op.Mul(t, z), poly(op, dt, z, coeffs)))


def asin_small(op: Op, dt: ir.DataType, t: ir.Value) -> ir.Value:
    """asin(t) for |t| <= 0.5."""
    return _odd_poly(op, dt, t, _ASIN_P)


def asin_abs(op: Op, dt: ir.DataType, a: ir.Value) -> ir.Value:
    """asin(a) for 0 <= a (NaN above 1): pi/2 - 2 asin(sqrt((1 - a) / 2)) for a > 0.5."""
    big = op.Greater(a, const(op, 0.5, dt))
    t = op.Where(big, op.Sqrt(op.Mul(op.Sub(const(op, 1.0, dt), a), const(op, 0.5, dt))), a)
    p = asin_small(op, dt, t)
    return op.Where(big, op.Sub(const(op, math.pi / 2, dt), op.Add(p, p)), p)


def atan_abs(op: Op, dt: ir.DataType, a: ir.Value) -> ir.Value:
    """atan(a) for a >= 0, reduced to |t| <= tan(pi/8) by atan(a) = pi/2 - atan(1/a) and
    atan(a) = pi/4 + atan((a - 1) / (a + 1))."""
    one = const(op, 1.0, dt)
    big = op.Greater(a, const(op, _TAN_3PI_8, dt))
    mid = op.Greater(a, const(op, _TAN_PI_8, dt))
    t = op.Where(big, op.Neg(op.Div(one, a)), op.Where(mid, op.Div(op.Sub(a, one), op.Add(a, one)), a))
    base = op.Where(
        big, const(op, math.pi / 2, dt), op.Where(mid, const(op, math.pi / 4, dt), const(op, 0.0, dt))
    )
    return op.Add(base, _odd_poly(op, dt, t, _ATAN_P))


def half_exp(op: Op, dt: ir.DataType, a: ir.Value) -> ir.Value:
    """exp(a) / 2 without overflowing where exp(a) alone would (a in (88.7, 89.4] in float32)."""
    return op.Where(
        op.Greater(a, const(op, 80.0, dt)),
        op.Exp(op.Sub(a, const(op, math.log(2.0), dt))),
        op.Mul(op.Exp(a), const(op, 0.5, dt)),
    )
