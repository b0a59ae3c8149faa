"""Shared fixtures: real `edgekit convert` runs of the bundled digits CNN, one per device profile.

Conversions are cached per session (several tests bundle the same output). Profiles whose
converter toolchain is not installed skip with the command that installs it (`make setup-test`
installs all of them, as CI does).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from converters.sources import SAMPLES_DIR

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "build" / "test-artifacts"
SAMPLE_ONNX = SAMPLES_DIR / "digits_cnn.onnx"
SAMPLE_EVAL = SAMPLES_DIR / "digits_eval.npz"
TOOLCHAIN_OF = {"tflite": "tensorflow", "tfjs": "tensorflow", "coreml": "coreml"}


def require_toolchains(targets: list[str]) -> None:
    from converters.toolchains import manager

    for t in targets:
        tc = TOOLCHAIN_OF.get(t)
        if tc and not manager.resolve(tc).installed():
            pytest.skip(
                f"{tc} toolchain not installed: run `edgekit toolchain install {tc}` (make setup-test)"
            )


@pytest.fixture(scope="session")
def convert_profile(tmp_path_factory):
    """convert_profile(name, modes=None) -> (out_dir, report): `edgekit convert sample:digits --profile name`."""
    from converters.pipeline import convert
    from targets.profiles import resolve_profile

    cache: dict[tuple[str, tuple[str, ...] | None], tuple[Path, object]] = {}

    def run(name: str, modes: list[str] | None = None):
        key = (name, tuple(modes) if modes else None)
        if key not in cache:
            targets, final_modes, chosen_by = resolve_profile(name, None, modes)
            require_toolchains(targets)
            out = tmp_path_factory.mktemp(f"conv-{name}")
            report = convert(
                "sample:digits",
                targets=targets,
                modes=final_modes,
                out=out,
                chosen_by=chosen_by,
                pairs=list(chosen_by),  # as `edgekit convert --profile` does
                profile=name,
            )
            cache[key] = (out, report)
        return cache[key]

    return run


@pytest.fixture(scope="session")
def reference():
    """reference(inputs) -> onnxruntime fp32 outputs of the original sample model."""
    from targets.runtimes.onnxrt import OnnxRuntime

    rt = OnnxRuntime(SAMPLE_ONNX)
    return rt.run


@pytest.fixture(scope="session")
def eval_inputs() -> dict[str, np.ndarray]:
    data = np.load(SAMPLE_EVAL)
    return {"input": data["input"][:8].astype(np.float32), "labels": data["labels"][:8]}


def save_artifact(path: Path) -> Path:
    """Copy a test artifact (screenshot) to build/test-artifacts/ for CI to keep."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    dest = ARTIFACTS / path.name
    shutil.copyfile(path, dest)
    return dest


def relocate(bundle: Path, tmp_path: Path) -> Path:
    """Move a bundle somewhere else (the original is gone): it must work from anywhere."""
    dest = tmp_path / "relocated" / bundle.name
    dest.parent.mkdir(parents=True)
    shutil.move(str(bundle), dest)
    assert not bundle.exists()
    return dest
