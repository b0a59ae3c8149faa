"""The update thread under hostile artifact servers (issue 10): a newer or rollback manifest
cancels a download stuck on a trickling server, a redirect loop is a named failure without a
traceback, failed downloads cannot pile up `.part` files, and stop() does not wait on a download.

Real Updater worker thread, real signed manifests, real HTTP servers on loopback, real onnxruntime."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.download_limits import DownloadLimits
from agent.updater import Updater
from edgekit.trust import SigningKey
from tests.agent.faulty_http import FaultyArtifactServer
from tests.agent.support import ArtifactServer, Keys, X, expected_probs, make_updater, manifest
from tests.agent.test_crash import wait_for

pytestmark = pytest.mark.timeout(60)
PATIENT = DownloadLimits(deadline_s=600, min_bytes_per_s=0)  # only a cancel can end a trickle


def faulty_updater(tmp_path: Path, keys: Keys, reports: list[dict[str, Any]], **opts: Any) -> Updater:
    return make_updater(tmp_path, keys, reports, retries=0, timeout=30, **opts)


def part_of(u: Updater, file: Path) -> Path:
    return u.store.part_path(hashlib.sha256(file.read_bytes()).hexdigest(), "onnx")


@pytest.fixture
def slow(files: Path) -> Iterator[FaultyArtifactServer]:
    with FaultyArtifactServer(files) as srv:
        srv.bytes_per_s = 1
        yield srv


@pytest.fixture
def worker(tmp_path: Path, keys: Keys) -> Iterator[tuple[Updater, list[dict[str, Any]]]]:
    reports: list[dict[str, Any]] = []
    u = faulty_updater(tmp_path, keys, reports, limits=PATIENT)
    yield u, reports
    u.stop()


def test_rollback_manifest_cancels_download_stuck_on_trickling_server(
    worker, keys: Keys, files: Path, http: ArtifactServer, slow: FaultyArtifactServer
) -> None:
    u, reports = worker
    v1 = manifest(keys, file=files / "cls_v1.onnx", url=http.url + "cls_v1.onnx", sequence=1, version="1")
    assert u.handle(v1) == "active"
    u.start()
    u.submit(
        manifest(
            keys,
            file=files / "cls_v2.onnx",
            url=slow.file_url("cls_v2.onnx"),
            sequence=2,
            version="2",
            smoke_bias=0.5,
        )
    )
    wait_for(lambda: part_of(u, files / "cls_v2.onnx").exists(), what="trickle started")
    t0 = time.monotonic()
    # The fleet rolls back: a newer sequence pointing at the older artifact.
    u.submit(
        manifest(keys, file=files / "cls_v1.onnx", url=http.url + "cls_v1.onnx", sequence=3, version="1-rb")
    )
    wait_for(lambda: u.states.get("cls").version == "1-rb" and u.states.get("cls").state == "active")
    assert time.monotonic() - t0 < 10  # not after 100 KiB at 1 byte/s
    superseded = [r for r in reports if r["sequence"] == 2 and r["state"] == "rolled_back"]
    assert superseded and superseded[0]["reason"] == "superseded"
    np.testing.assert_allclose(u.registry.get("cls").run({"input": X})["probs"], expected_probs(X), atol=1e-6)


def test_a_copy_of_the_manifest_being_started_cancels_nothing(
    tmp_path: Path, keys: Keys, files: Path
) -> None:
    """Regression (seen with a restarted broker): the retained copy and the session's queued copy
    of one manifest arrive back to back; the second reached submit() after the worker dequeued the
    first but before it accepted it, still verified as newer, and cancelled the update it was
    starting ("superseded"). The worker's own in-flight manifest is never superseded by itself."""
    u = faulty_updater(tmp_path, keys, [])
    seq2 = manifest(
        keys, file=files / "cls_v1.onnx", url="http://127.0.0.1:9/cls_v1.onnx", sequence=2, version="2"
    )
    seq3 = manifest(
        keys, file=files / "cls_v1.onnx", url="http://127.0.0.1:9/cls_v1.onnx", sequence=3, version="3"
    )
    # the worker's state right after it dequeued seq2 (what _loop sets), before handle() accepts it
    u._inflight, u._job_cancel = seq2, threading.Event()
    u.submit(seq2)
    assert not u._job_cancel.is_set()
    u.submit(seq3)  # a really newer manifest still cancels
    assert u._job_cancel.is_set()


def test_newer_update_proceeds_after_cancel_and_replays_or_forgeries_cancel_nothing(
    worker, keys: Keys, files: Path, http: ArtifactServer, slow: FaultyArtifactServer
) -> None:
    u, reports = worker
    u.start()
    seq1 = manifest(
        keys, file=files / "cls_v1.onnx", url=slow.file_url("cls_v1.onnx"), sequence=1, version="1"
    )
    u.submit(seq1)
    part = part_of(u, files / "cls_v1.onnx")
    wait_for(lambda: part.exists() and part.stat().st_size > 0, what="trickle started")
    u.submit(seq1)  # the retained copy, redelivered on a reconnect
    forged = manifest(
        keys,
        file=files / "cls_v2.onnx",
        url=http.url + "cls_v2.onnx",
        sequence=9,
        version="9",
        signer=SigningKey.generate(),
    )
    u.submit(forged)
    had = part.stat().st_size
    wait_for(lambda: part.stat().st_size >= had + 2, what="still downloading")  # neither cancelled it
    assert not any(r.get("reason") == "superseded" for r in reports)
    u.submit(
        manifest(
            keys,
            file=files / "cls_v2.onnx",
            url=http.url + "cls_v2.onnx",
            sequence=2,
            version="2",
            smoke_bias=0.5,
        )
    )
    wait_for(lambda: u.states.get("cls").version == "2" and u.states.get("cls").state == "active")
    assert [r["reason"] for r in reports if r["state"] == "rolled_back"] == ["superseded"]
    assert any(r.get("refused") and r["reason"] == "unknown_key" for r in reports)


def test_redirect_loop_is_a_named_failure_without_traceback(
    tmp_path: Path, keys: Keys, files: Path, slow: FaultyArtifactServer, caplog: pytest.LogCaptureFixture
) -> None:
    reports: list[dict[str, Any]] = []
    u = faulty_updater(tmp_path, keys, reports)
    caplog.set_level(logging.DEBUG)
    out = u.handle(
        manifest(keys, file=files / "cls_v1.onnx", url=slow.url + "/loop/0", sequence=1, version="1")
    )
    assert out == "rolled_back:too_many_redirects"
    assert reports[-1]["state"] == "rolled_back" and reports[-1]["reason"] == "too_many_redirects"
    assert not [r for r in caplog.records if r.exc_info]
    assert "Traceback" not in caplog.text


def test_failed_downloads_keep_one_part_and_it_still_resumes(
    tmp_path: Path, keys: Keys, files: Path, slow: FaultyArtifactServer
) -> None:
    slow.bytes_per_s = None
    reports: list[dict[str, Any]] = []
    u = faulty_updater(tmp_path, keys, reports)
    names = ["slow.onnx", "cls_v2.onnx", "cls_v1.onnx"]  # three different artifacts
    for seq, name in enumerate(names, 1):
        slow.cut_at = (files / name).stat().st_size // 2  # the link dies half way
        out = u.handle(
            manifest(keys, file=files / name, url=slow.file_url(name), sequence=seq, version=str(seq))
        )
        assert out == "rolled_back:download"
        assert len(list(u.store.incoming.iterdir())) == 1  # not one more per failure
    last = part_of(u, files / "cls_v1.onnx")
    assert list(u.store.incoming.iterdir()) == [last]  # the newest one is kept
    cut = last.stat().st_size
    assert cut == slow.cut_at
    slow.cut_at = None  # the fleet re-issues the release once the link is back
    out = u.handle(
        manifest(keys, file=files / "cls_v1.onnx", url=slow.file_url("cls_v1.onnx"), sequence=4, version="4")
    )
    assert out == "active"
    assert slow.requests[-1] == ("/files/cls_v1.onnx", f"bytes={cut}-")  # resumed, not refetched
    assert list(u.store.incoming.iterdir()) == []


def test_stop_does_not_wait_for_a_trickle_and_the_restart_resumes(
    tmp_path: Path, keys: Keys, files: Path, slow: FaultyArtifactServer
) -> None:
    reports: list[dict[str, Any]] = []
    u = faulty_updater(tmp_path, keys, reports, limits=PATIENT)
    u.start()
    u.submit(
        manifest(keys, file=files / "cls_v1.onnx", url=slow.file_url("cls_v1.onnx"), sequence=1, version="1")
    )
    part = part_of(u, files / "cls_v1.onnx")
    wait_for(lambda: part.exists() and part.stat().st_size > 0, what="trickle started")
    t0 = time.monotonic()
    u.stop()
    assert time.monotonic() - t0 < 5
    assert u.states.get("cls").state == "downloading"  # interrupted, not failed: nothing rolled back
    had = part.stat().st_size
    slow.bytes_per_s = None
    u2 = faulty_updater(tmp_path, keys, reports)
    assert u2.recover() == ["cls:active"]
    assert slow.requests[-1] == ("/files/cls_v1.onnx", f"bytes={had}-")
