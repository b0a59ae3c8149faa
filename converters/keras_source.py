"""Keras / TensorFlow sources -> ONNX, via tf2onnx in the isolated tensorflow toolchain.

The user's environment never needs tensorflow for a file source (.keras, .h5, SavedModel dir).
A live Keras model object is saved to a temporary .keras file here, in the caller's environment
(which has Keras, since it holds the model), and converted in the toolchain like a file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from converters.toolchains import manager
from edgekit.errors import BackendError, InvalidModelError

DEFAULT_OPSET = 17


def _is_source_path(p: Path) -> bool:
    return p.suffix in (".keras", ".h5") or (p.is_dir() and (p / "saved_model.pb").exists())


def keras_to_onnx(path_or_model: str | Path | Any, out_path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Convert a Keras model (object, .keras/.h5 file or SavedModel dir) to an ONNX file at out_path."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(path_or_model, str | Path):
        src = Path(path_or_model)
        if not src.exists():
            raise InvalidModelError(f"{src} does not exist")
        if not _is_source_path(src):
            raise InvalidModelError(f"{src.name} is not a .keras/.h5 file or a SavedModel directory")
        _convert(src, out, opset)
        return out
    with tempfile.TemporaryDirectory(prefix="edgekit-keras-") as tmp:
        saved = Path(tmp) / "model.keras"
        try:
            path_or_model.save(saved)
        except Exception as e:
            raise InvalidModelError(f"cannot save the Keras model for conversion: {e}") from e
        _convert(saved, out, opset)
    return out


def _convert(src: Path, out: Path, opset: int) -> None:
    res = manager.run_worker(
        "keras", "keras_worker.py", {"action": "to_onnx", "source": str(src), "out": str(out), "opset": opset}
    )
    if not res.data.get("ok"):
        err = res.data.get("error", {})
        cls = InvalidModelError if err.get("kind") == "bad_input" else BackendError
        raise cls(f"keras -> onnx: {err.get('message', 'conversion failed')}")


def make_mobilenetv2(
    out_path: str | Path,
    input_shape: tuple[int, int, int] = (96, 96, 3),
    classes: int = 10,
    seed: int = 0,
    train_npz: str | Path | None = None,
    epochs: int = 3,
) -> Path:
    """Build keras.applications.MobileNetV2(weights=None) in the toolchain and save it (tests, demos).

    Without train_npz the weights stay random (BatchNorm re-estimated on noise): fine for fp32
    parity, but such a network amplifies any perturbation, so int8 parity needs a trained one:
    train_npz (x: (N, *input_shape) float32, y: (N,) labels) gets a short fit first.
    """
    request = {
        "action": "mobilenetv2",
        "out": str(out_path),
        "input_shape": list(input_shape),
        "classes": classes,
        "seed": seed,
    }
    if train_npz is not None:
        request.update(train_npz=str(train_npz), epochs=epochs)
    res = manager.run_worker("keras", "keras_worker.py", request)
    if not res.data.get("ok"):
        raise BackendError(f"building MobileNetV2 failed: {res.data.get('error', {}).get('message')}")
    return Path(out_path)
