"""Cloud fallback against a real second `edgekit serve` process (and a real slow/dead cloud)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agent import fallback as fb
from agent.breaker import CLOSED, OPEN, CircuitBreaker
from agent.cloud import CloudClient
from agent.engine import Engine
from agent.models import ModelRegistry, load_model
from agent.oip import OIPError
from agent.server import ServerThread, build_app
from tests.agent.conftest import ServeProcess, free_port
from tests.agent.models import CONFIDENT, UNSURE

pytestmark = pytest.mark.timeout(60)


def engine_with(model_dir: Path, cloud_url: str | None, policies: dict[str, fb.Policy], **cloud_kw) -> Engine:
    reg = ModelRegistry()
    reg.put(load_model("cls", model_dir / "cls_v2.onnx", "local-2"))
    reg.put(load_model("fragile", model_dir / "fragile.onnx", "local-f"))
    reg.put(load_model("slow", model_dir / "slow.onnx", "local-s"))
    cloud = CloudClient(cloud_url, **cloud_kw) if cloud_url else None
    return Engine(reg, cloud=cloud, policies=policies)


class SlowCloud:
    """A real OIP-ish server that answers after `delay` seconds (or fast when delay is 0)."""

    def __init__(self) -> None:
        self.delay = 1.0
        self.calls = 0

        async def infer(request: Request) -> JSONResponse:
            self.calls += 1
            await asyncio.sleep(self.delay)
            body = await request.json()
            n = body["inputs"][0]["shape"][0]
            return JSONResponse(
                {
                    "model_name": "cls",
                    "model_version": "slow-cloud",
                    "outputs": [
                        {"name": "probs", "datatype": "FP32", "shape": [n, 3], "data": [1.0, 0.0, 0.0] * n}
                    ],
                }
            )

        self.thread = ServerThread(
            Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])
        )

    def __enter__(self) -> SlowCloud:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.thread.stop()


def test_local_first_each_reason(model_dir: Path, cloud: ServeProcess) -> None:
    pols = {
        "cls": fb.Policy(confidence_threshold=0.9),
        "slow": fb.Policy(local_deadline_ms=1),
        "fragile": fb.Policy(),
    }
    e = engine_with(model_dir, cloud.url, pols, binary=False)
    try:
        r = e.infer("cls", {"input": CONFIDENT})
        assert (r.served_by, r.fallback_reason, r.model_version) == ("local", None, "local-2")
        r = e.infer("cls", {"input": UNSURE})
        assert (r.served_by, r.fallback_reason, r.model_version) == ("cloud", "low_confidence", "cloud-1")
        np.testing.assert_allclose(r.outputs["probs"], 1 / 3, atol=1e-6)
        r = e.infer("cloudonly", {"input": CONFIDENT})  # not installed locally
        assert (r.served_by, r.fallback_reason) == ("cloud", "missing_model")
        r = e.infer("fragile", {"input": np.vstack([CONFIDENT, UNSURE])})  # batch 2 breaks local Reshape
        assert (r.served_by, r.fallback_reason) == ("cloud", "local_error")
        assert r.outputs["probs"].shape == (2, 3)
        r = e.infer("slow", {"input": CONFIDENT})
        assert (r.served_by, r.fallback_reason) == ("cloud", "deadline_exceeded")
        assert e.metrics.fallbacks.value("slow", "deadline_exceeded") == 1
        assert e.metrics.fallbacks.value("cls", "low_confidence") == 1
        # validation errors are the client's: 400 locally, no cloud round trip
        with pytest.raises(OIPError) as ei:
            e.infer("cls", {"input": np.zeros((1, 5), np.float32)})
        assert ei.value.status == 400
    finally:
        e.close()


def test_missing_model_and_binary_cloud(model_dir: Path, cloud: ServeProcess) -> None:
    e = engine_with(model_dir, cloud.url, {}, binary=True)
    try:
        r = e.infer("cloudonly", {"input": CONFIDENT})
        assert (r.served_by, r.fallback_reason) == ("cloud", "missing_model")
        assert r.outputs["probs"][0].argmax() == 0
        with pytest.raises(OIPError) as ei:
            e.infer("ghost", {"input": CONFIDENT})
        assert ei.value.status == 404
    finally:
        e.close()


def test_cloud_first_and_cloud_down(model_dir: Path, cloud: ServeProcess) -> None:
    pols = {"cls": fb.Policy(mode=fb.CLOUD_FIRST)}
    e = engine_with(model_dir, cloud.url, pols)
    try:
        r = e.infer("cls", {"input": CONFIDENT})
        assert (r.served_by, r.model_version) == ("cloud", "cloud-1")
    finally:
        e.close()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    e = engine_with(model_dir, dead, pols, retries=1, breaker=CircuitBreaker(2, 30))
    try:
        r = e.infer("cls", {"input": CONFIDENT})
        assert (r.served_by, r.fallback_reason) == ("local", "cloud_unreachable")
        assert e.cloud.breaker.state == OPEN  # 2 attempts (1 retry) = 2 failures
        t0 = time.monotonic()
        r = e.infer("cls", {"input": CONFIDENT})
        assert (r.served_by, r.fallback_reason) == ("local", "breaker_open")
        assert time.monotonic() - t0 < 5  # sanity, not a performance assertion
    finally:
        e.close()


def test_slow_cloud_trips_breaker_then_half_open_recovers(model_dir: Path) -> None:
    with SlowCloud() as slow:
        pols = {"cls": fb.Policy(mode=fb.CLOUD_FIRST, cloud_deadline_ms=150)}
        e = engine_with(
            model_dir,
            slow.thread.url,
            pols,
            retries=0,
            binary=False,
            breaker=CircuitBreaker(failure_threshold=2, reset_timeout=0.5),
        )
        try:
            reasons = [e.infer("cls", {"input": CONFIDENT}).fallback_reason for _ in range(4)]
            assert reasons == ["cloud_timeout", "cloud_timeout", "breaker_open", "breaker_open"]
            assert slow.calls == 2  # an open breaker sends nothing
            slow.delay = 0
            time.sleep(0.6)  # past reset_timeout: half-open lets one probe through
            r = e.infer("cls", {"input": CONFIDENT})
            assert (r.served_by, r.model_version) == ("cloud", "slow-cloud")
            assert e.cloud.breaker.state == CLOSED
        finally:
            e.close()


def test_cloud_only_down_is_clear_503_over_http(model_dir: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    e = engine_with(model_dir, dead, {"cls": fb.Policy(mode=fb.CLOUD_ONLY)}, retries=0)
    srv = ServerThread(build_app(e)).start()
    try:
        doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}
        r = httpx.post(srv.url + "/v2/models/cls/infer", json=doc, timeout=10)
        assert r.status_code == 503
        assert "cloud-only" in r.json()["error"] and set(r.json()) == {"error"}
    finally:
        srv.stop()
        e.close()


def test_http_parameters_say_who_served(model_dir: Path, cloud: ServeProcess) -> None:
    e = engine_with(model_dir, cloud.url, {"cls": fb.Policy(confidence_threshold=0.9)})
    srv = ServerThread(build_app(e)).start()
    try:

        def ask(x: np.ndarray) -> dict:
            doc = {
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": x.ravel().tolist()}]
            }
            return httpx.post(srv.url + "/v2/models/cls/infer", json=doc, timeout=10).json()

        assert ask(CONFIDENT)["parameters"] == {"served_by": "local", "model_version": "local-2"}
        p = ask(UNSURE)["parameters"]
        assert p == {"served_by": "cloud", "model_version": "cloud-1", "fallback_reason": "low_confidence"}
        text = httpx.get(srv.url + "/metrics").text
        assert 'edgekit_agent_fallbacks_total{model="cls",reason="low_confidence"} 1' in text
        assert 'served_by="cloud"' in text
    finally:
        srv.stop()
        e.close()


def test_unload_over_http_falls_back_to_cloud(model_dir: Path, cloud: ServeProcess) -> None:
    """Triton's repository extension: an unloaded model is answered by the cloud (missing_model)."""
    e = engine_with(model_dir, cloud.url, {"cls": fb.Policy()})
    token = "t" * 32
    admin = {"Authorization": f"Bearer {token}"}
    srv = ServerThread(build_app(e, admin_token=token)).start()
    try:
        doc = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": CONFIDENT.ravel().tolist()}
            ]
        }
        assert (
            httpx.post(srv.url + "/v2/models/cls/infer", json=doc).json()["parameters"]["served_by"]
            == "local"
        )
        assert httpx.post(srv.url + "/v2/repository/models/cls/unload", headers=admin).status_code == 200
        p = httpx.post(srv.url + "/v2/models/cls/infer", json=doc, timeout=10).json()["parameters"]
        assert (p["served_by"], p["fallback_reason"]) == ("cloud", "missing_model")
        r = httpx.post(srv.url + "/v2/repository/models/cls/unload", headers=admin)
        assert r.status_code == 404 and "not loaded" in r.json()["error"]
    finally:
        srv.stop()
        e.close()
