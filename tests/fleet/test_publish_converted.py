"""`fleet publish` on a real `edgekit convert` output (not a hand-made one)."""

from __future__ import annotations

from pathlib import Path

from converters.pipeline import convert
from fleet.db import Database
from fleet.registry import Registry
from fleet.store import ArtifactStore


def test_publish_real_conversion(tmp_path: Path):
    out = tmp_path / "conv"
    report = convert("sample:digits", targets=["onnx"], modes=["none", "int8"], out=out)
    assert report.ok
    reg = Registry(Database(tmp_path / "fleet.db"), ArtifactStore(tmp_path / "artifacts"))
    stored = {a.key: a for a in reg.publish(out, "digits", "1.0.0")}
    assert set(stored) == {"onnx", "onnx-int8-static"}
    by_precision = {a.precision: a for a in report.artifacts}
    assert stored["onnx"].sha256 == by_precision["fp32"].sha256
    assert stored["onnx-int8-static"].sha256 == by_precision["int8-static"].sha256
    v = reg.version("digits", "1.0.0")
    # The smoke test is computed from the fp32 ONNX artifact on the card's inputs.
    assert v["smoke_test"] and "input" in v["smoke_test"]["inputs"]
    assert v["model_card"]["inputs"][0]["name"] == "input"
