"""decompose-<Op> for Erf, inverse trigonometric/hyperbolic functions and Tan: same numbers as
onnxruntime's own kernels over each op's domain, including its ends and tiny arguments.

Measured max relative error vs float64 numpy (script in the module docs): <= 4.5e-7 for all but
Sinh/Cosh (1.5e-6 for |x| > 80, where exp(|x| - ln 2) replaces exp(|x|) / 2 to avoid overflow).
The bounds below are 4-10x those measurements.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.passes.helpers import legalize_and_compare, unary

rng = np.random.default_rng(0)


def _mix(*parts) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in parts]).astype(np.float32)


DOMAINS = {
    "Acos": _mix(rng.uniform(-1, 1, 4000), [-1, 1, 0, 0.5, -0.5, 1e-8, -0.99999]),
    "Asin": _mix(rng.uniform(-1, 1, 4000), [-1, 1, 0, 0.5, -0.5, 1e-30, 0.99999]),
    "Atan": _mix(np.sinh(rng.uniform(-20, 20, 4000)), [0, 1e-30, 2.4142135, 0.41421357, 1e20, -3e38]),
    "Acosh": _mix(1 + np.exp(rng.uniform(-20, 5, 4000)), [1, 1e9, 1e20, 3e38]),
    "Asinh": _mix(np.sinh(rng.uniform(-20, 20, 4000)), [0, 1e-30, -1e-8, 1e9, -1e20, 3e38]),
    "Atanh": _mix(rng.uniform(-1, 1, 4000), [-1, 1, 0, 1e-8, 0.9999999]),
    "Sinh": _mix(rng.uniform(-89, 89, 4000), rng.uniform(-1e-3, 1e-3, 500), [0, 1e-30, 20, 20.001, -89.3]),
    "Cosh": _mix(rng.uniform(-89, 89, 4000), [0, 1e-30, 20, 88.8, -89.3]),
    "Tan": _mix(rng.uniform(-10, 10, 4000), [0, 1e-30, 1.5707963]),
    "Erf": _mix(rng.uniform(-6, 6, 4000), rng.uniform(-1e-3, 1e-3, 500), [0, 1e-30, 4, -4, np.inf, -np.inf]),
}
RTOL = {"Sinh": 1e-5, "Cosh": 1e-5}


@pytest.mark.parametrize("op", sorted(DOMAINS))
def test_decomposition_matches_onnxruntime(op: str) -> None:
    x = DOMAINS[op]
    legalize_and_compare(
        unary(op, shape=x.shape), f"decompose-{op}", {"x": x}, rtol=RTOL.get(op, 2e-6), atol=1e-6, gone=[op]
    )


@pytest.mark.parametrize("op", ["Erf", "Asinh"])
def test_float16_keeps_its_precision(op: str) -> None:
    """Constants are emitted in the input's type; fp16 results stay within fp16 rounding."""
    x = DOMAINS[op][:1000].clip(-60000, 60000).astype(np.float16)
    legalize_and_compare(
        unary(op, dtype=np.float16, shape=x.shape),
        f"decompose-{op}",
        {"x": x},
        rtol=5e-3,
        atol=2e-3,
        gone=[op],
    )


def test_integer_inputs_are_left_alone() -> None:
    from converters.passes import REGISTRY

    m = unary("Sinh", dtype=np.float64)
    assert REGISTRY["decompose-Sinh"].apply(m)  # float64 is a float
    m = unary("Abs", dtype=np.int32)
    assert not REGISTRY["decompose-Erf"].apply(m)
