"""The cloud breaker's half-open probe is always released (issue 10).

A probe that ended in an exception nobody classified (here: a cloud whose answer cannot even be
decoded) used to keep the only half-open slot forever, so the breaker never closed again and the
cloud was never asked again, however healthy it became. Real HTTP cloud on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent import fallback as fb
from agent.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from agent.cloud import BAD_RESPONSE, CloudClient, CloudError
from agent.server import ServerThread
from tests.agent.models import CONFIDENT
from tests.agent.test_crash import wait_for
from tests.agent.test_fallback import engine_with

pytestmark = pytest.mark.timeout(60)


class MisbehavingCloud:
    """A V2 endpoint whose answer is chosen by `mode`: "ok", "500", "bad_gzip" or "garbage"."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0

        async def infer(request: Request) -> Response:
            self.calls += 1
            body = await request.json()
            n = body["inputs"][0]["shape"][0]
            if self.mode == "500":
                return JSONResponse({"error": "overloaded"}, status_code=500)
            if self.mode == "bad_gzip":  # says gzip, is not: the client cannot decode the body
                return Response(b"this is not gzip", headers={"Content-Encoding": "gzip"})
            if self.mode == "garbage":  # 200, but not a V2 answer
                return Response(b"[" * 100_000, media_type="application/json")
            out = {"name": "probs", "datatype": "FP32", "shape": [n, 3], "data": [1.0, 0.0, 0.0] * n}
            return JSONResponse({"model_name": "cls", "model_version": "cloud-ok", "outputs": [out]})

        self.thread = ServerThread(
            Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])
        )


@pytest.fixture
def cloud() -> Iterator[MisbehavingCloud]:
    c = MisbehavingCloud()
    c.thread.start()
    yield c
    c.thread.stop()


def open_then_half_open(client: CloudClient, cloud: MisbehavingCloud) -> None:
    cloud.mode = "500"
    for _ in range(2):
        with pytest.raises(CloudError):
            client.infer("cls", {"input": CONFIDENT})
    assert client.breaker.state == OPEN
    wait_for(lambda: client.breaker.state == HALF_OPEN, timeout=5, what="half-open")


@pytest.mark.parametrize("mode", ["bad_gzip", "garbage"])
def test_unusable_probe_answer_is_named_and_frees_the_probe(cloud: MisbehavingCloud, mode: str) -> None:
    client = CloudClient(
        cloud.thread.url, retries=0, binary=False, timeout=5, breaker=CircuitBreaker(2, reset_timeout=0.2)
    )
    try:
        open_then_half_open(client, cloud)
        cloud.mode = mode
        with pytest.raises(CloudError) as e:
            client.infer("cls", {"input": CONFIDENT})
        assert e.value.kind == BAD_RESPONSE
        assert client.breaker.state == OPEN  # a failed probe re-opens; it does not hang half-open
        cloud.mode = "ok"
        wait_for(lambda: client.breaker.state == HALF_OPEN, timeout=5, what="half-open again")
        r = client.infer("cls", {"input": CONFIDENT})
        assert r.model_version == "cloud-ok"
        assert client.breaker.state == CLOSED
    finally:
        client.close()


def test_cloud_first_garbled_answer_falls_back_to_local_with_a_reason(
    cloud: MisbehavingCloud, model_dir: Path
) -> None:
    cloud.mode = "bad_gzip"
    e = engine_with(
        model_dir, cloud.thread.url, {"cls": fb.Policy(mode=fb.CLOUD_FIRST)}, retries=0, binary=False
    )
    try:
        r = e.infer("cls", {"input": CONFIDENT})
        assert (r.served_by, r.fallback_reason) == ("local", BAD_RESPONSE)
        assert np.isfinite(r.outputs["probs"]).all()
    finally:
        e.close()


def test_released_probe_lets_the_next_call_probe() -> None:
    now = [0.0]
    b = CircuitBreaker(failure_threshold=1, reset_timeout=10, clock=lambda: now[0])
    b.record_failure()
    now[0] = 10.0
    assert b.allow()  # the probe
    assert not b.allow()  # one at a time
    b.release()  # the probe raised before any verdict
    assert b.state == HALF_OPEN
    assert b.allow()  # the next call may probe; the breaker is not stuck
    b.record_success()
    assert b.state == CLOSED
