"""Delta updates on the agent: a real Updater, real HTTP on loopback (Range-capable server), real
onnxruntime. Version 2 differs from version 1 in its bias and one slice of its weights (a
fine-tune); the manifest offers a zstd patch-from delta from version 1's blob."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent import fallback as fb
from agent.engine import Engine
from agent.server import ServerThread, build_app
from edgekit.delta import ALGORITHM, make_delta
from edgekit.trust import build_manifest, build_smoke_test, dumps, sign
from tests.agent.support import ArtifactServer, Keys, card, expected_probs, make_updater

pytestmark = pytest.mark.timeout(120)

X = np.array([[2.0, 1.0, 0.0, 0.0]], np.float32)
BALLAST = 1 << 18  # float32 weights: 1 MiB that the outputs do not depend on, like a frozen backbone


def ballast_classifier(path: Path, bias: float, tuned_slice: int, seed: int = 7) -> Path:
    """softmax(x[:, :3] + [bias, 0, 0]) plus a constant ballast tensor (summed, times 0).
    `tuned_slice` floats at its end are reseeded: what a fine-tune of the last layer changes."""
    w = np.zeros((4, 3), np.float32)
    w[0, 0] = w[1, 1] = w[2, 2] = 1.0
    ballast = np.random.default_rng(seed).standard_normal(BALLAST).astype(np.float32)
    if tuned_slice:
        ballast[-tuned_slice:] = np.random.default_rng(seed + 1).standard_normal(tuned_slice)
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.array([bias, 0.0, 0.0], np.float32), "B"),
        numpy_helper.from_array(ballast, "BALLAST"),
        numpy_helper.from_array(np.array(0.0, np.float32), "ZERO"),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "W", "B"], ["logits"]),
        helper.make_node("ReduceSum", ["BALLAST"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "ZERO"], ["z"]),
        helper.make_node("Add", ["logits", "z"], ["logits2"]),
        helper.make_node("Softmax", ["logits2"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "ballast",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def signed(
    keys: Keys,
    file: Path,
    url: str,
    sequence: int,
    version: str,
    bias: float,
    deltas: list[dict[str, Any]] | None = None,
    provenance: dict[str, Any] | None = None,
) -> bytes:
    art = {
        "url": url,
        "sha256": sha(file),
        "size": file.stat().st_size,
        "file": file.name,
        "precision": "fp32",
        "delta": deltas,
    }
    s = build_manifest(
        fleet="f",
        device="dev-1",
        model="cls",
        version=version,
        sequence=sequence,
        artifacts={"onnx": art},
        model_card=card("cls"),
        smoke_test=build_smoke_test({"input": X}, {"probs": expected_probs(X, bias)}),
        provenance=provenance,
    )
    return dumps(sign(s, [keys.release]))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "files"
    d.mkdir()
    v1 = ballast_classifier(d / "v1.onnx", bias=0.0, tuned_slice=0)
    v2 = ballast_classifier(d / "v2.onnx", bias=0.5, tuned_slice=BALLAST // 5)
    other = ballast_classifier(d / "other.onnx", bias=0.0, tuned_slice=0, seed=99)
    make_delta(v1, v2, d / "v1-v2.zst")
    make_delta(other, v2, d / "other-v2.zst")  # a real delta, but from a base no device holds
    return {"v1": v1, "v2": v2, "other": other, "delta": d / "v1-v2.zst", "wrong": d / "other-v2.zst"}


def delta_entry(base: Path, delta: Path, url: str) -> dict[str, Any]:
    return {
        "from_sha256": sha(base),
        "url": url,
        "sha256": sha(delta),
        "size": delta.stat().st_size,
        "algorithm": ALGORITHM,
    }


def fetched(server: ArtifactServer, name: str) -> list[str | None]:
    return [rng for path, rng in server.requests if path == name]


def install_v1(tmp_path: Path, keys: Keys, server: ArtifactServer, reports: list[dict]) -> Any:
    up = make_updater(tmp_path, keys, reports)
    assert up.handle(signed(keys, server.root / "v1.onnx", server.url + "v1.onnx", 1, "1", 0.0)) == "active"
    return up


def outputs(up: Any) -> np.ndarray:
    return up.registry.get("cls").run({"input": X})["probs"]


def test_delta_used_and_result_verified(tmp_path: Path, files: dict[str, Path]) -> None:
    keys, reports = Keys.make(), []
    server = ArtifactServer(files["v1"].parent).start()
    try:
        up = install_v1(tmp_path, keys, server, reports)
        delta = delta_entry(files["v1"], files["delta"], server.url + "v1-v2.zst")
        assert files["delta"].stat().st_size <= 0.3 * files["v2"].stat().st_size  # the wire saving
        msg = signed(keys, files["v2"], server.url + "v2.onnx", 2, "2", 0.5, deltas=[delta])
        assert up.handle(msg) == "active"
        assert fetched(server, "v1-v2.zst") == [None]
        assert fetched(server, "v2.onnx") == []  # the full artifact never crossed the wire
        np.testing.assert_allclose(outputs(up), expected_probs(X, 0.5), atol=1e-6)
        assert up.store.active("cls").sha256 == sha(files["v2"])
        active = [r for r in reports if r["state"] == "active" and r["version"] == "2"]
        assert active and active[-1]["delta"] == "used"
        assert up.snapshot()["models"]["cls"]["delta"] == "used"
        assert not list(up.store.incoming.iterdir())  # delta and its output cleaned up
    finally:
        server.stop()


@pytest.mark.parametrize(
    "how, reason",
    [
        ("corrupt", "fallback:sha256_mismatch"),  # bytes damaged after the fleet signed them
        ("wrong_base", "fallback:bad_delta"),  # signed, but it does not patch this base
        ("no_base", "fallback:missing_base"),  # offered only from a blob this device lacks
    ],
)
def test_unusable_delta_falls_back_to_full(
    tmp_path: Path, files: dict[str, Path], how: str, reason: str
) -> None:
    keys, reports = Keys.make(), []
    root = files["v1"].parent
    if how == "corrupt":
        good = files["delta"].read_bytes()
        delta = delta_entry(files["v1"], files["delta"], "")
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0xFF
        (root / "served.zst").write_bytes(bytes(bad))
    elif how == "wrong_base":
        delta = delta_entry(files["v1"], files["wrong"], "")  # claims v1 as its base
        (root / "served.zst").write_bytes(files["wrong"].read_bytes())
    else:
        delta = delta_entry(files["other"], files["delta"], "")
        (root / "served.zst").write_bytes(files["delta"].read_bytes())
    server = ArtifactServer(root).start()
    try:
        up = install_v1(tmp_path, keys, server, reports)
        delta["url"] = server.url + "served.zst"
        msg = signed(keys, files["v2"], server.url + "v2.onnx", 2, "2", 0.5, deltas=[delta])
        assert up.handle(msg) == "active"
        assert fetched(server, "v2.onnx") == [None]  # the full artifact, from byte 0
        assert fetched(server, "served.zst") == ([] if how == "no_base" else [None])
        np.testing.assert_allclose(outputs(up), expected_probs(X, 0.5), atol=1e-6)
        active = [r for r in reports if r["state"] == "active" and r["version"] == "2"]
        assert active[-1]["delta"] == reason
    finally:
        server.stop()


def test_half_downloaded_delta_resumes(tmp_path: Path, files: dict[str, Path]) -> None:
    """Stop the agent in the middle of the delta; the next start resumes it with a Range request."""
    keys = Keys.make()
    assert files["delta"].stat().st_size > 2 * 65536  # the server sends 64 KiB per (slow) chunk
    fast = ArtifactServer(files["v1"].parent).start()
    try:
        install_v1(tmp_path, keys, fast, []).stop()
    finally:
        fast.stop()
    slow = ArtifactServer(files["v1"].parent, delay=0.4).start()
    try:
        delta = delta_entry(files["v1"], files["delta"], slow.url + "v1-v2.zst")
        msg = signed(keys, files["v2"], slow.url + "v2.onnx", 2, "2", 0.5, deltas=[delta])
        up = make_updater(tmp_path, keys)
        up.start()
        up.submit(msg)
        part = up.store.part_path(delta["sha256"], "delta")
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size >= 65536):
            assert time.monotonic() < deadline, "the delta download never started"
            time.sleep(0.02)
        up.stop()  # like a shutdown mid-download: the state stays `downloading`
        have = part.stat().st_size
        assert 0 < have < delta["size"]

        reports: list[dict] = []
        again = make_updater(tmp_path, keys, reports)
        again.start()
        deadline = time.monotonic() + 60
        while not any(r["state"] == "active" and r["version"] == "2" for r in reports):
            assert time.monotonic() < deadline, f"no activation: {reports}"
            time.sleep(0.05)
        again.stop()
        ranges = fetched(slow, "v1-v2.zst")
        assert ranges[0] is None and ranges[-1] is not None
        assert int(ranges[-1].split("=")[1].rstrip("-")) >= have  # resumed, not restarted
        assert fetched(slow, "v2.onnx") == []
        assert [r for r in reports if r["state"] == "active"][-1]["delta"] == "used"
        assert again.store.active("cls").sha256 == sha(files["v2"])
    finally:
        slow.stop()


def test_provenance_in_metadata_and_mismatch_refused(tmp_path: Path, files: dict[str, Path]) -> None:
    keys, reports = Keys.make(), []
    server = ArtifactServer(files["v1"].parent).start()
    try:
        up = install_v1(tmp_path, keys, server, reports)
        row = {"sha256": sha(files["v2"]), "size": files["v2"].stat().st_size, "target": "onnx"}
        prov = {"source_sha256": "ab" * 32, "calibration_sha256": "cd" * 32, "artifacts": {"onnx": row}}
        # A release whose embedded report names other bytes than its artifact: refused, not installed.
        lying = {**prov, "artifacts": {"onnx": {**row, "sha256": sha(files["v1"])}}}
        bad = signed(keys, files["v2"], server.url + "v2.onnx", 2, "2", 0.5)
        doc = __import__("json").loads(bad)
        doc["signed"]["provenance"] = lying
        assert up.handle(dumps(sign(doc["signed"], [keys.release]))) == "refused:provenance_mismatch"
        assert reports[-1]["reason"] == "provenance_mismatch" and reports[-1]["refused"] is True
        assert up.store.active("cls").version == "1"

        good = signed(keys, files["v2"], server.url + "v2.onnx", 3, "2", 0.5, provenance=prov)
        assert up.handle(good) == "active"
        engine = Engine(up.registry, default_policy=fb.Policy(mode=fb.LOCAL_ONLY))
        st = ServerThread(build_app(engine, status=up.snapshot, max_body=1 << 20)).start()
        try:
            meta = httpx.get(st.url + "/v2/models/cls", timeout=10).json()
            assert meta["provenance"]["calibration_sha256"] == "cd" * 32
            assert meta["provenance"]["artifact"] == {"key": "onnx", **row}
            status = httpx.get(st.url + "/agent/status", timeout=10).json()
            assert status["models"]["cls"]["provenance"]["source_sha256"] == "ab" * 32
        finally:
            st.stop()
            engine.close()
        # After a restart the provenance comes from the pointer, not the manifest.
        again = make_updater(tmp_path, keys)
        assert again.load_active() == ["cls"]
        assert again.registry.get("cls").extra["provenance"]["artifact"]["sha256"] == row["sha256"]
    finally:
        server.stop()
