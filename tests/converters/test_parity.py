"""validate.parity: explicit bounds, and non-finite values that must match exactly."""

from __future__ import annotations

import numpy as np

from converters.validate import parity
from edgekit.formats import Tolerance

FP32 = Tolerance(0.99999, 1e-4)


def test_matching_infinities_and_nans_are_equal():
    y = np.array([1.0, np.inf, -np.inf, np.nan, 2.0], np.float32)
    p = parity(FP32, {"y": y}, {"y": y.copy()})
    assert p.ok and p.cosine > 1 - 1e-12 and p.max_abs_err == 0.0


def test_a_nan_where_the_reference_is_finite_fails():
    y = np.array([1.0, 2.0, 3.0], np.float32)
    p = parity(FP32, {"y": y}, {"y": np.array([1.0, np.nan, 3.0], np.float32)})
    assert not p.ok and "NaN/inf differ in y" in p.bound


def test_an_infinity_of_the_wrong_sign_fails():
    y = np.array([np.inf, 1.0], np.float32)
    assert not parity(FP32, {"y": y}, {"y": np.array([-np.inf, 1.0], np.float32)}).ok


def test_finite_part_is_still_judged():
    y = np.array([np.inf, 1.0, 2.0], np.float32)
    assert not parity(FP32, {"y": y}, {"y": np.array([np.inf, 1.0, 2.5], np.float32)}).ok
