"""Dynamic batching behind the real OIP server: concurrent HTTP clients, statistics and metrics,
a client that goes away while queued, hot swaps under batched load, and `edgekit serve` flags."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import fallback as fb
from agent.batcher import BatchingConfig
from agent.engine import Engine
from agent.models import ModelRegistry, load_model
from agent.server import ServerThread, build_app
from tests.agent.conftest import EDGEKIT, REPO, free_port, wait_http
from tests.agent.support import expected_probs

pytestmark = pytest.mark.timeout(90)


def _doc(x: np.ndarray) -> dict:
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }


def _server(model_dir: Path, cfg: BatchingConfig) -> tuple[Engine, ServerThread]:
    reg = ModelRegistry()
    reg.put(load_model("cls", model_dir / "cls_v1.onnx", "1"))
    engine = Engine(reg, default_policy=fb.Policy(mode=fb.LOCAL_ONLY), batching={"cls": cfg})
    return engine, ServerThread(build_app(engine)).start()


def _wait(cond, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)


def test_concurrent_clients_share_batches_and_get_their_own_rows(model_dir: Path) -> None:
    # 9 requests of 1 or 2 samples (12 in all) into batches of at most 4, whose rows must go back to
    # the right clients. How they pack depends on arrival order (FIFO: a 2 after 1+2 waits for the
    # next batch), so a short delay lets a partial batch run instead of waiting for company.
    engine, srv = _server(model_dir, BatchingConfig(max_batch_size=4, max_queue_delay_us=500_000))
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(6)]
    xs += [rng.standard_normal((2, 4)).astype(np.float32) for _ in range(3)]  # 12 samples: 3 full batches
    got: dict[int, httpx.Response] = {}

    def call(i: int) -> None:
        got[i] = httpx.post(f"{srv.url}/v2/models/cls/infer", json=_doc(xs[i]), timeout=30)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(xs))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for i, x in enumerate(xs):
            assert got[i].status_code == 200, got[i].text
            out = np.array(got[i].json()["outputs"][0]["data"], np.float32).reshape(x.shape[0], 3)
            np.testing.assert_allclose(out, expected_probs(x), rtol=1e-5, atol=1e-6)
        stats = httpx.get(f"{srv.url}/v2/models/cls/stats").json()["model_stats"][0]
        assert stats["inference_count"] == len(xs)
        batches = stats["execution_count"]  # one per batch, not one per request
        assert 3 <= batches < len(xs)
        assert sum(b["compute_infer"]["count"] for b in stats["batch_stats"]) == batches
        families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{srv.url}/metrics").text)}
        queue = {s.name: s.value for s in families["edgekit_agent_queue_seconds"].samples}
        compute = {s.name: s.value for s in families["edgekit_agent_compute_seconds"].samples}
        sizes = {s.name: s.value for s in families["edgekit_agent_batch_size"].samples}
        assert queue["edgekit_agent_queue_seconds_count"] == len(xs)
        assert compute["edgekit_agent_compute_seconds_count"] == len(xs)
        assert (
            sizes["edgekit_agent_batch_size_count"] == batches and sizes["edgekit_agent_batch_size_sum"] == 12
        )
    finally:
        srv.stop()
        engine.close()


def test_a_client_that_goes_away_is_dropped_from_the_queue(model_dir: Path) -> None:
    engine, srv = _server(model_dir, BatchingConfig(max_batch_size=8, max_queue_delay_us=60_000_000))
    x = np.ones((1, 4), np.float32)
    try:
        with pytest.raises(httpx.TimeoutException):  # the client gives up and closes its connection
            httpx.post(f"{srv.url}/v2/models/cls/infer", json=_doc(x), timeout=0.5)
        _wait(lambda: engine.metrics.requests.value("cls", "none", "error_499") == 1)
        batcher = engine.batcher(engine.registry.get("cls"))
        assert batcher is not None and batcher.queued() == 0
        full = np.ones((8, 4), np.float32)  # a full batch runs at once, without the cancelled one
        assert httpx.post(f"{srv.url}/v2/models/cls/infer", json=_doc(full), timeout=30).status_code == 200
        stats = httpx.get(f"{srv.url}/v2/models/cls/stats").json()["model_stats"][0]
        assert (stats["inference_count"], stats["execution_count"]) == (1, 1)
        assert [b["batch_size"] for b in stats["batch_stats"]] == [8]
    finally:
        srv.stop()
        engine.close()


def test_hot_swap_under_batched_load_drops_nothing(model_dir: Path) -> None:
    engine, srv = _server(model_dir, BatchingConfig(max_batch_size=8, max_queue_delay_us=2000))
    stop = threading.Event()
    results: list[str] = []
    errors: list[str] = []
    x = np.array([[2.0, 1.0, 0.0, 0.0]], np.float32)

    def client() -> None:
        with httpx.Client(base_url=srv.url, timeout=20) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v2/models/cls/infer", json=_doc(x))
                    if r.status_code != 200:
                        errors.append(r.text)
                        continue
                    body = r.json()
                    out = np.array(body["outputs"][0]["data"], np.float32).reshape(1, 3)
                    bias = 0.5 if body["model_version"].startswith("b") else 0.0
                    np.testing.assert_allclose(out, expected_probs(x, bias), rtol=1e-5, atol=1e-6)
                    results.append(body["model_version"])
                except Exception as e:  # a dropped connection or a wrong answer is a failure
                    errors.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        _wait(lambda: len(results) >= 10)
        for i in range(20):  # reference swaps as fast as models load, between two different models
            v2 = i % 2 == 0
            engine.registry.put(
                load_model(
                    "cls", model_dir / ("cls_v2.onnx" if v2 else "cls_v1.onnx"), f"{'b' if v2 else 'a'}{i}"
                )
            )
        n = len(results)
        _wait(lambda: len(results) >= n + 10)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        srv.stop()
        engine.close()
    assert errors == []
    assert len({v for v in results if v != "1"}) >= 2  # requests were served across the swaps
    assert engine.stats.snapshot([("cls", "1")])["model_stats"][0]["execution_count"] >= 1


def test_serve_cli_batching_flags(model_dir: Path) -> None:
    port = free_port()
    cmd = [*EDGEKIT, "serve", str(model_dir / "cls_v1.onnx"), "--name", "cls", "--port", str(port)]
    cmd += [
        "--max-batch-size",
        "4",
        "--max-queue-delay-us",
        "100",
        "--no-memory-arena",
        "--inter-op-threads",
        "1",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/v2/health/ready", proc=proc)
        x = np.array([[2.0, 1.0, 0.0, 0.0]], np.float32)
        r = httpx.post(f"{url}/v2/models/cls/infer", json=_doc(x), timeout=10)
        assert r.status_code == 200
        stats = httpx.get(f"{url}/v2/models/cls/stats").json()["model_stats"][0]
        assert [b["batch_size"] for b in stats["batch_stats"]] == [1]  # it went through the batcher
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run(
        [
            *EDGEKIT,
            "serve",
            str(model_dir / "cls_v1.onnx"),
            "--max-batch-size",
            "4",
            "--preferred-batch-size",
            "8",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert "preferred_batch_sizes [8]" in bad.stderr and "Traceback" not in bad.stderr


def test_model_config_describes_a_batched_model_as_triton_does(model_dir: Path) -> None:
    """max_batch_size from the batching config, dims without the batch dim, dynamic_batching."""
    engine, srv = _server(
        model_dir, BatchingConfig(max_batch_size=8, max_queue_delay_us=700, preferred_batch_sizes=(4, 8))
    )
    try:
        cfg = httpx.get(f"{srv.url}/v2/models/cls/config", timeout=10).json()
    finally:
        srv.stop()
        engine.close()
    assert cfg["max_batch_size"] == 8
    assert [i["dims"] for i in cfg["input"]] == [[4]] and [o["dims"] for o in cfg["output"]] == [[3]]
    assert cfg["dynamic_batching"] == {"max_queue_delay_microseconds": 700, "preferred_batch_size": [4, 8]}
