"""The one target/precision table: every consumer reads the same numbers from it."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit import formats
from edgekit.trust import build_smoke_test, check_smoke_outputs

PAIRS = [(t, m) for t, f in formats.TARGETS.items() for m in f.modes]


def _at_cosine(y: np.ndarray, cos: float, seed: int = 0) -> np.ndarray:
    """y rotated in its own plane to exactly `cos` (same norm): a uniform quantization-like error."""
    v = np.random.default_rng(seed).standard_normal(y.size)
    u = y.ravel() / np.linalg.norm(y)
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    out = (cos * u + np.sqrt(1 - cos**2) * v) * np.linalg.norm(y)
    return out.reshape(y.shape).astype(np.float64)


@pytest.mark.parametrize(("target", "mode"), PAIRS)
def test_conversion_and_smoke_judge_by_the_same_bound(target, mode):
    """An artifact just inside its conversion bound passes the signed smoke test; just outside fails
    (outputs large enough that the atol escape does not apply)."""
    from converters.validate import parity

    p = formats.precision(target, mode)
    y = np.linspace(-20, 20, 64).reshape(1, 64)
    smoke = build_smoke_test(
        {"x": np.zeros((1, 1), np.float32)}, {"y": y}, tolerance=formats.smoke_tolerances()
    )
    inside = 1 - (1 - p.tolerance.min_cosine) / 2
    outside = 1 - (1 - p.tolerance.min_cosine) * 2
    assert check_smoke_outputs(smoke, {"y": _at_cosine(y, inside)}, precision=p.label).ok, p.label
    assert not check_smoke_outputs(smoke, {"y": _at_cosine(y, outside)}, precision=p.label).ok, p.label
    if p.tolerance.max_abs_rel is None:  # fp32 also bounds max abs, which a rotation exceeds
        assert parity(p.tolerance, {"y": y}, {"y": _at_cosine(y, inside)}).ok
    assert not parity(p.tolerance, {"y": y}, {"y": _at_cosine(y, outside)}).ok


def test_every_label_has_one_tolerance():
    labels: dict[str, formats.Tolerance] = {}
    for t in formats.TARGETS.values():
        for p in t.modes.values():
            assert labels.setdefault(p.label, p.tolerance) == p.tolerance, p.label
    assert set(formats.smoke_tolerances()) == {"default", *labels}


def test_derived_tables():
    from agent.updater import runtime_available
    from converters.toolchains.manager import resolve
    from targets.profiles import SUPPORTED_MODES

    assert formats.runtime_for("m.ort") == formats.runtime_for("m.onnx") == "onnxruntime"
    assert formats.runtime_for("m.tflite") == "litert"
    assert formats.format_for("x/model.json") == "tfjs" and formats.format_for("m.ort") == "ort"
    assert formats.format_for("m.mlpackage") == "coreml"
    assert {t: tuple(f.modes) for t, f in formats.TARGETS.items()} == SUPPORTED_MODES
    assert runtime_available("model.onnx") and not runtime_available("model.mlpackage")
    for target, f in formats.TARGETS.items():
        if f.toolchain:
            assert resolve(target).name == f.toolchain
    assert {"int8"} == formats.NEEDS_CALIBRATION
