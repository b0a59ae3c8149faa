"""Provenance in the signed manifest (edgekit.provenance, the manifest schema and verifier) and the
delta codec (edgekit.delta): built from a report, bounded, refused when it does not describe
the artifact it sits beside."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit import provenance as P
from edgekit.delta import ALGORITHM, DeltaError, apply_delta, make_delta
from edgekit.trust import REASONS, SigningKey, VerificationError, dumps, sign
from edgekit.trust.errors import PROVENANCE_MISMATCH
from edgekit.trust.manifest_schema import MAX_DELTAS
from tests.edgekit.trustkit import SHA, new_keys, signed_manifest, trusted_root
from tests.edgekit.trustkit import verifier as make_verifier

OTHER = "cd" * 32

REPORT: dict[str, Any] = {
    "model": "digits-cnn",
    "source": {"format": "onnx", "origin": "sample:digits", "sha256": "11" * 32},
    "reference": {"top1": 0.9694},
    "edgekit_version": "0.1.0",
    "created_at": "2026-12-02T04:44:03+00:00",
    "calibration_sha256": "22" * 32,
    "eval_sha256": "33" * 32,
    "toolchains": {"tensorflow": "0d1d1d579b76"},
    "artifacts": [],
}
ROW = {
    "target": "tflite",
    "precision": "fp32",
    "runtime": "litert",
    "max_abs_err": 1.3e-05,
    "cosine": 0.99999,
    "parity_bound": "cosine >= 0.99999, max_abs <= 0.0027",
    "top1": 0.9694,
    "top1_drop_pts": 0.0,
    "latency_ms": 0.02,
    "versions": {"onnx2tf": "1.29.24", "tensorflow": "2.19.0"},
}


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return new_keys("root", "release")


def verify(keys: dict[str, SigningKey], signed: dict[str, Any]):
    root = trusted_root(keys["root"], [keys["release"]])
    return make_verifier(root).verify(dumps(sign(signed, [keys["release"]])))


def test_from_report_keeps_what_a_device_can_check() -> None:
    prov = P.from_report(REPORT, {"tflite": (SHA, 10, ROW)}, "2026-12-03T00:00:00Z")
    assert prov["source_sha256"] == "11" * 32 and prov["calibration_sha256"] == "22" * 32
    assert prov["toolchains"] == {"tensorflow": {"lock": "0d1d1d579b76"}}
    row = prov["artifacts"]["tflite"]
    assert (row["sha256"], row["size"], row["toolchain"]) == (SHA, 10, "tensorflow")
    assert row["parity"] == {"max_abs_error": 1.3e-05, "cosine": 0.99999, "bound": ROW["parity_bound"]}
    assert row["accuracy"] == {"top1": 0.9694, "top1_drop_pts": 0.0}
    assert row["versions"]["onnx2tf"] == "1.29.24"
    text = "\n".join(P.lines(prov))
    assert "calibration sha256:" in text and "cosine 0.999990" in text and "lock 0d1d1d579b76" in text


def test_from_report_drops_what_the_manifest_cannot_carry() -> None:
    hostile = {
        **ROW,
        "cosine": math.nan,
        "max_abs_err": math.inf,
        "parity_bound": None,
        "runtime": "x\x1b[31m",
        "top1": 7.0,
        "top1_drop_pts": None,
        "versions": {"a" * 500: "1", "ok": "2\n"},
    }
    report = {**REPORT, "source": {"sha256": "not-hex", "origin": "o" * 5000}, "created_at": "yesterday"}
    prov = P.from_report(report, {"onnx": (SHA, 10, hostile)})
    row = prov["artifacts"]["onnx"]
    assert "parity" not in row and "runtime" not in row and "accuracy" not in row
    assert row["versions"] == {"a" * 125 + "...": "1"}  # long text is cut, control characters dropped
    assert "source_sha256" not in prov and "converted_at" not in prov
    assert len(prov["source_origin"]) == 512
    # an old-style report (a bare list) still gives rows
    assert P.from_report([], {"onnx": (SHA, 10, {})})["artifacts"]["onnx"] == {"sha256": SHA, "size": 10}


def test_manifest_with_matching_provenance_verifies(keys) -> None:
    prov = P.from_report(REPORT, {"onnx": (SHA, 10, ROW)})
    m = verify(keys, signed_manifest(provenance=prov))
    assert m.provenance == prov
    shown = P.for_artifact(m.provenance, "onnx")
    assert shown["artifact"]["key"] == "onnx" and shown["calibration_sha256"] == "22" * 32


@pytest.mark.parametrize(
    "rows",
    [
        {"onnx": (OTHER, 10, ROW)},  # another sha256
        {"onnx": (SHA, 11, ROW)},  # another size
        {"onnx": (SHA, 10, ROW), "tflite": (SHA, 10, ROW)},  # an artifact the manifest lacks
    ],
)
def test_provenance_that_does_not_match_is_refused(keys, rows) -> None:
    assert PROVENANCE_MISMATCH in REASONS
    prov = P.from_report(REPORT, rows)
    with pytest.raises(VerificationError) as e:
        signed_manifest(provenance=prov)  # the fleet never signs it...
    assert e.value.reason == PROVENANCE_MISMATCH
    s = signed_manifest()
    s["provenance"] = prov  # ...and an agent refuses it when a fleet (or a leaked key) does
    with pytest.raises(VerificationError) as e:
        verify(keys, s)
    assert e.value.reason == PROVENANCE_MISMATCH


def test_provenance_is_bounded(keys) -> None:
    s = signed_manifest()
    s["provenance"] = {"artifacts": {"onnx": {"sha256": SHA, "size": 10, "parity": {"cosine": 2.0}}}}
    with pytest.raises(VerificationError) as e:
        verify(keys, s)
    assert e.value.reason == "malformed" and "cosine" in str(e.value)
    s["provenance"] = {"toolchains": {f"t{i}": {"lock": "ab" * 6} for i in range(17)}}
    with pytest.raises(VerificationError) as e:
        verify(keys, s)
    assert e.value.reason == "malformed"


def delta(i: int = 0, algorithm: str = ALGORITHM) -> dict[str, Any]:
    return {
        "from_sha256": f"{i:064x}",
        "url": "/artifacts/x",
        "sha256": OTHER,
        "size": 3,
        "algorithm": algorithm,
    }


def test_delta_entries_are_signed_typed_and_bounded(keys) -> None:
    art = {"url": "http://x/a", "sha256": SHA, "size": 10, "file": "m.onnx", "precision": "fp32"}
    plain = signed_manifest(artifacts={"onnx": art})
    assert "delta" not in plain["artifacts"]["onnx"]  # absent, not null: old agents see the same bytes
    m = verify(keys, signed_manifest(artifacts={"onnx": {**art, "delta": [delta(1), delta(2, "xdelta9")]}}))
    got = m.artifacts["onnx"].delta
    assert [d.algorithm for d in got] == [ALGORITHM, "xdelta9"]  # an unknown algorithm is not an error
    s = signed_manifest(artifacts={"onnx": art})
    s["artifacts"]["onnx"]["delta"] = [delta(i) for i in range(MAX_DELTAS + 1)]
    with pytest.raises(VerificationError) as e:
        verify(keys, s)
    assert e.value.reason == "malformed"
    s["artifacts"]["onnx"]["delta"] = [{**delta(), "from_sha256": "../../etc"}]
    with pytest.raises(VerificationError):
        verify(keys, s)


def test_delta_codec_round_trip_and_refusals(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    old = rng.standard_normal(100_000).astype(np.float32)
    new = old.copy()
    new[-5_000:] = rng.standard_normal(5_000)  # "the last layer retrained"
    (tmp_path / "old").write_bytes(old.tobytes())
    (tmp_path / "new").write_bytes(new.tobytes())
    size = make_delta(tmp_path / "old", tmp_path / "new", tmp_path / "d")
    assert size < 0.1 * new.nbytes
    assert apply_delta(tmp_path / "old", tmp_path / "d", tmp_path / "out", new.nbytes) == new.nbytes
    assert (tmp_path / "out").read_bytes() == new.tobytes()
    with pytest.raises(DeltaError, match="expands past"):
        apply_delta(tmp_path / "old", tmp_path / "d", tmp_path / "out", new.nbytes - 1)
    (tmp_path / "other").write_bytes(rng.standard_normal(100_000).astype(np.float32).tobytes())
    with pytest.raises(DeltaError) as e:
        apply_delta(tmp_path / "other", tmp_path / "d", tmp_path / "out", new.nbytes)
    assert e.value.reason == "bad_delta"
    data = (tmp_path / "d").read_bytes()
    (tmp_path / "cut").write_bytes(data[: len(data) // 2])
    with pytest.raises(DeltaError, match="truncated"):
        apply_delta(tmp_path / "old", tmp_path / "cut", tmp_path / "out", new.nbytes)
    (tmp_path / "long").write_bytes(data + b"junk")
    with pytest.raises(DeltaError, match="after the zstd frame"):
        apply_delta(tmp_path / "old", tmp_path / "long", tmp_path / "out", new.nbytes)
