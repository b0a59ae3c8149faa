"""A real `edgekit convert` writes the drift baseline (edgekit.drift) into report.json, from the
calibration inputs and the fp32 reference's outputs, and `fleet publish` carries it into the
provenance the signed manifests embed."""

from __future__ import annotations

import json
from pathlib import Path

from converters.pipeline import convert
from edgekit import drift as D
from fleet.db import Database
from fleet.registry import Registry
from fleet.store import ArtifactStore


def test_convert_writes_the_baseline_and_publish_signs_it(tmp_path: Path) -> None:
    out = tmp_path / "conv"
    report = convert("sample:digits", targets=["onnx"], modes=["none"], out=out)
    assert report.ok
    drift = json.loads((out / "report.json").read_text())["drift"]
    by = {(d["io"], d["name"]): d for d in drift}
    x, y = by[("input", "input")], next(d for (io, _), d in by.items() if io == "output")
    assert x["count"] > 0 and len(x["hist"]) == len(x["edges"]) + 1 <= D.BINS
    assert abs(sum(x["hist"]) - 1) < 1e-3 and "classes" not in x
    # digits is a classifier: its first output has a class histogram over its 10 classes
    assert len(y["classes"]) == 10 and len(y["conf"]) == 10 and abs(sum(y["classes"]) - 1) < 1e-3

    reg = Registry(Database(tmp_path / "fleet.db"), ArtifactStore(tmp_path / "artifacts"))
    reg.publish(out, "digits", "1.0.0")
    assert reg.version("digits", "1.0.0")["provenance"]["drift"] == drift
