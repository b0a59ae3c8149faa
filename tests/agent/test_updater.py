"""Update pipeline against a real HTTP artifact server and real onnxruntime (no MQTT here)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from agent.updater import Updater
from edgekit.trust import SigningKey, utcnow
from tests.agent.support import ArtifactServer, Keys, X, expected_probs, make_updater, manifest

pytestmark = pytest.mark.timeout(60)


def install(
    u: Updater, keys: Keys, files: Path, http: ArtifactServer, seq: int, file: str, version: str, **kw
):
    return u.handle(
        manifest(keys, file=files / file, url=http.url + file, sequence=seq, version=version, **kw)
    )


def run(u: Updater, name: str = "cls") -> np.ndarray:
    model = u.registry.get(name)
    assert model is not None
    return model.run({"input": X})["probs"]


def test_happy_path_then_update_keeps_previous(tmp_path, keys, files, http) -> None:
    reports: list = []
    u = make_updater(tmp_path, keys, reports)
    assert install(u, keys, files, http, 1, "cls_v1.onnx", "1.0") == "active"
    assert [r["state"] for r in reports] == ["downloading", "verifying", "staged", "smoke_tested", "active"]
    assert all(r["device"] == "dev-1" and r["sequence"] == 1 and r["version"] == "1.0" for r in reports)
    np.testing.assert_allclose(run(u), expected_probs(X), atol=1e-6)
    assert install(u, keys, files, http, 2, "cls_v2.onnx", "2.0", smoke_bias=0.5) == "active"
    np.testing.assert_allclose(run(u), expected_probs(X, 0.5), atol=1e-6)
    active, previous = u.store.pointer("cls")
    assert active.version == "2.0" and previous.version == "1.0"
    assert u.store.has_blob(previous.sha256, "onnx")  # kept for instant rollback
    # the status messages follow the shared schema
    from edgekit.protocol import Status

    for r in reports:
        Status.from_json(json.dumps(r))


def test_restart_loads_active_and_trusts_sequence(tmp_path, keys, files, http) -> None:
    u = make_updater(tmp_path, keys)
    assert install(u, keys, files, http, 5, "cls_v1.onnx", "1.0") == "active"
    u2 = make_updater(tmp_path, keys)
    assert u2.load_active() == ["cls"]
    assert u2.registry.get("cls").version == "1.0"
    assert u2.verifier.last_sequence == 5
    # the retained desired message arriving again after a restart is a no-op, not a failure
    again = manifest(
        keys, file=files / "cls_v1.onnx", url=http.url + "cls_v1.onnx", sequence=5, version="evil"
    )
    assert u2.handle(again) == "refused:replay"  # same sequence, other content: a real replay
    n = len(http.requests)
    st = u2.states.get("cls")
    from edgekit.trust import dumps

    assert u2.handle(dumps(st.manifest)) == "duplicate"
    assert len(http.requests) == n


@pytest.mark.parametrize("attack", ["tampered", "expired", "replayed", "wrong_key", "wrong_device"])
def test_refused_manifests(tmp_path, keys, files, http, attack) -> None:
    reports: list = []
    u = make_updater(tmp_path, keys, reports)
    assert install(u, keys, files, http, 3, "cls_v1.onnx", "1.0") == "active"
    reports.clear()
    url = http.url + "cls_v2.onnx"
    kw = dict(file=files / "cls_v2.onnx", url=url, version="2.0", smoke_bias=0.5)
    if attack == "tampered":
        doc = json.loads(manifest(keys, sequence=4, **kw))
        doc["signed"]["artifacts"]["onnx"]["url"] = "http://127.0.0.1:1/evil.onnx"
        payload, reason = json.dumps(doc).encode(), "bad_signature"
    elif attack == "expired":
        payload = manifest(
            keys, sequence=4, now=utcnow() - timedelta(hours=3), expires_in=timedelta(hours=1), **kw
        )
        reason = "expired"
    elif attack == "replayed":
        payload, reason = manifest(keys, sequence=3, **kw), "replay"
    elif attack == "wrong_key":
        payload, reason = manifest(keys, sequence=4, signer=SigningKey.generate(), **kw), "unknown_key"
    else:
        payload, reason = manifest(keys, sequence=4, device="dev-2", **kw), "wrong_device"
    n = len(http.requests)
    assert u.handle(payload) == f"refused:{reason}"
    assert len(http.requests) == n  # nothing was fetched for a refused manifest
    assert reports[-1]["state"] == "failed" and reports[-1]["reason"] == reason
    assert u.registry.get("cls").version == "1.0"
    assert u.store.active("cls").version == "1.0"


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "oversized"])
def test_bad_artifact_refused_and_rolled_back(tmp_path, keys, files, http, damage) -> None:
    reports: list = []
    u = make_updater(tmp_path, keys, reports)
    assert install(u, keys, files, http, 1, "cls_v1.onnx", "1.0") == "active"
    good = (files / "cls_v2.onnx").read_bytes()
    bad = files / "bad.onnx"
    if damage == "truncated":
        bad.write_bytes(good[: len(good) // 2])
        reason = "size_mismatch"
    elif damage == "corrupted":
        bad.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
        reason = "sha256_mismatch"
    else:
        bad.write_bytes(good + b"extra bytes")
        reason = "size_mismatch"
    import hashlib

    payload = manifest(
        keys,
        file=bad,
        url=http.url + "bad.onnx",
        sequence=2,
        version="2.0",
        smoke_bias=0.5,
        size=len(good),
        sha256=hashlib.sha256(good).hexdigest(),
    )
    assert u.handle(payload) == f"rolled_back:{reason}"
    assert [r["state"] for r in reports[-2:]] == ["failed", "rolled_back"]
    assert reports[-1]["reason"] == reason
    assert u.registry.get("cls").version == "1.0" and u.store.active("cls").version == "1.0"
    assert not list(u.store.incoming.iterdir())  # bad bytes are not kept for a later "resume"
    np.testing.assert_allclose(run(u), expected_probs(X), atol=1e-6)


def test_failed_smoke_test_rolls_back(tmp_path, keys, files, http) -> None:
    reports: list = []
    u = make_updater(tmp_path, keys, reports)
    assert install(u, keys, files, http, 1, "cls_v1.onnx", "1.0") == "active"
    # v2's real outputs have bias 0.5; the signed reference says bias 3.0: the smoke test must fail
    assert install(u, keys, files, http, 2, "cls_v2.onnx", "2.0", smoke_bias=3.0) == "rolled_back:smoke_test"
    assert [r["state"] for r in reports[-4:]] == ["verifying", "staged", "failed", "rolled_back"]
    assert u.registry.get("cls").version == "1.0"
    assert u.store.active("cls").version == "1.0"


def test_resume_partial_download_never_refetches_verified_bytes(tmp_path, keys, files, http) -> None:
    u = make_updater(tmp_path, keys)
    data = (files / "slow.onnx").read_bytes()
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    part = u.store.part_path(sha, "onnx")
    part.write_bytes(data[: len(data) // 3])  # what a killed download left behind
    payload = manifest(keys, file=files / "slow.onnx", url=http.url + "slow.onnx", sequence=1, version="1")
    assert u.handle(payload) == "active"
    assert http.requests[-1] == ("slow.onnx", f"bytes={len(data) // 3}-")
    # a later manifest pointing at the same bytes does not download at all
    n = len(http.requests)
    payload = manifest(keys, file=files / "slow.onnx", url=http.url + "slow.onnx", sequence=2, version="1b")
    assert u.handle(payload) == "active"
    assert len(http.requests) == n


def test_identical_copy_of_finished_manifest_is_a_duplicate_even_after_expiry(
    tmp_path, keys, files, http
) -> None:
    """The fleet re-publishes desired state byte-identical after a broker restart; once the
    manifest has expired that copy must not be reported as a failed (expired) update."""
    reports: list = []
    u = make_updater(tmp_path, keys, reports)
    payload = manifest(
        keys, file=files / "cls_v1.onnx", url=http.url + "cls_v1.onnx", sequence=1, version="1.0"
    )
    assert u.handle(payload) == "active"
    reports.clear()
    u.verifier._now = utcnow() + timedelta(days=400)  # long after expires_at
    assert u.handle(payload) == "duplicate"
    assert reports == []
    assert u.registry.get("cls").version == "1.0"
    # A *different* expired manifest is still refused.
    other = manifest(
        keys,
        file=files / "cls_v2.onnx",
        url=http.url + "cls_v2.onnx",
        sequence=2,
        version="2.0",
        smoke_bias=0.5,
    )
    assert u.handle(other) == "refused:expired"


def test_artifact_preference_by_key_runtime_by_file_type(tmp_path, keys, files, http) -> None:
    """Keys name format + precision (`onnx-int8-static`); the runtime is chosen by the file type."""
    import hashlib

    data = (files / "cls_v2.onnx").read_bytes()
    int8 = {
        "url": http.url + "cls_v2.onnx",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "file": "cls_v2.onnx",
        "precision": "int8-static",
    }
    tfjs = dict(int8, file="model.tfjs.tar", precision="fp32")  # no runtime for it on this box
    u = make_updater(tmp_path, keys)
    u.formats = ["tfjs", "onnx-int8-static", "onnx"]
    payload = manifest(
        keys,
        file=files / "cls_v1.onnx",
        url=http.url + "cls_v1.onnx",
        sequence=1,
        version="1.0",
        smoke_bias=0.5,
        extra_artifacts={"onnx-int8-static": int8, "tfjs": tfjs},
    )
    assert u.handle(payload) == "active"
    assert u.store.active("cls").sha256 == int8["sha256"]
