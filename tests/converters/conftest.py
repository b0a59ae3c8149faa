"""Shared converter fixtures: real models trained on scikit-learn's digits, built once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters.sources import SAMPLES_DIR

SAMPLE_ONNX = SAMPLES_DIR / "digits_cnn.onnx"
SAMPLE_CALIB = SAMPLES_DIR / "digits_calib.npz"
SAMPLE_EVAL = SAMPLES_DIR / "digits_eval.npz"


@pytest.fixture(scope="session")
def digits_cnn() -> Path:
    """The bundled sample (trained DigitsCNN, input 'input' [N,1,8,8], output 'logits' [N,10])."""
    return SAMPLE_ONNX


@pytest.fixture(scope="session")
def digits_npz() -> tuple[Path, Path]:
    """(calibration.npz, eval.npz) for the 8x8 digits models."""
    return SAMPLE_CALIB, SAMPLE_EVAL


@pytest.fixture(scope="session")
def mobilenetish(tmp_path_factory) -> dict[str, Path]:
    """A MobileNet-style net (depthwise-separable blocks, BN, ReLU6) trained on 16x16 digits."""
    from tests.converters.models import export_onnx, train

    d = tmp_path_factory.mktemp("mobilenetish")
    model, acc, (x_te, y_te), x_tr = train("mobilenetish", epochs=12, size=16)
    assert acc > 0.9, f"training went wrong: test top-1 {acc}"
    onnx_path = export_onnx(model, d / "mobilenetish.onnx", size=16)
    rng = np.random.default_rng(0)
    np.savez(d / "calib.npz", input=x_tr[rng.choice(len(x_tr), 200, replace=False)])
    np.savez(d / "eval.npz", input=x_te, labels=y_te)
    return {"onnx": onnx_path, "calib": d / "calib.npz", "eval": d / "eval.npz", "module": model}
