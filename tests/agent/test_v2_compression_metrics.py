"""Request/response compression (tritonclient's request_ and response_compression_algorithm, the
binary extension's header length over a compressed body, zip bombs) and the Prometheus exposition
(prometheus_client: process/python collectors, build info, OpenMetrics negotiation, per-version
counters and queue/compute histograms, model_info following loads and unloads)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from agent import fallback as fb
from agent import versions
from agent.engine import Engine
from agent.models import ModelRegistry, load_model
from agent.server import ServerThread, build_app
from tests.agent.models import CONFIDENT
from tests.agent.oip_checks import ADMIN_TOKEN, infer_doc

pytestmark = pytest.mark.timeout(60)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LIMIT = 1 << 20
X = np.tile(CONFIDENT, (64, 1))  # 64 rows: a body worth compressing


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[ServerThread]:
    reg = ModelRegistry({"cls": versions.ALL})
    reg.put(load_model("cls", model_dir / "cls_v1.onnx", "1", sha256="a" * 64))
    reg.put(load_model("cls", model_dir / "cls_v2.onnx", "2", sha256="b" * 64))
    engine = Engine(reg, default_policy=fb.Policy(mode=fb.LOCAL_ONLY))
    st = ServerThread(build_app(engine, max_body=LIMIT, admin_token=ADMIN_TOKEN)).start()
    yield st
    st.stop()
    engine.close()


def _expected(x: np.ndarray, bias: float) -> np.ndarray:
    z = x[:, :3] + np.array([bias, 0, 0], np.float32)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---- compression ------------------------------------------------------------------------------


@pytest.mark.parametrize("request_alg", [None, "gzip", "deflate"])
@pytest.mark.parametrize("response_alg", [None, "gzip", "deflate"])
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_compression(server: ServerThread, request_alg, response_alg, binary: bool) -> None:
    import tritonclient.http as th

    client = th.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        inp = th.InferInput("input", list(X.shape), "FP32")
        inp.set_data_from_numpy(X, binary_data=binary)
        res = client.infer(
            "cls",
            [inp],
            outputs=[th.InferRequestedOutput("probs", binary_data=binary)],
            model_version="2",
            request_compression_algorithm=request_alg,
            response_compression_algorithm=response_alg,
        )
        np.testing.assert_allclose(res.as_numpy("probs"), _expected(X, 0.5), atol=1e-6)
    finally:
        client.close()


def test_response_is_compressed_when_asked(server: ServerThread) -> None:
    for coding, inflate in (("gzip", gzip.decompress), ("deflate", zlib.decompress)):
        with httpx.stream(
            "POST",
            f"{server.url}/v2/models/cls/infer",
            json=infer_doc(X),
            headers={"Accept-Encoding": coding},
            timeout=10,
        ) as r:
            raw = b"".join(r.iter_raw())
            assert r.status_code == 200 and r.headers["content-encoding"] == coding
        plain = json.loads(inflate(raw))
        assert len(raw) < len(json.dumps(plain))
        assert np.array(plain["outputs"][0]["data"]).shape == (64 * 3,)


def test_compressed_binary_request_counts_the_decompressed_header(server: ServerThread) -> None:
    head = {
        "id": "x" * 1000,  # a header that compresses to less than its own length
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [64, 4],
                "parameters": {"binary_data_size": X.nbytes},
            }
        ],
    }
    header = json.dumps(head).encode()
    body = gzip.compress(header + X.astype("<f4").tobytes())
    assert len(body) < len(header)  # the header length is larger than the whole compressed body
    r = httpx.post(
        f"{server.url}/v2/models/cls/infer",
        content=body,
        headers={"Content-Encoding": "gzip", "Inference-Header-Content-Length": str(len(header))},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        np.array(r.json()["outputs"][0]["data"]).reshape(64, 3), _expected(X, 0.5), atol=1e-6
    )


@pytest.mark.parametrize(
    ("body", "encoding", "status", "needle"),
    [
        (gzip.compress(b" " * (LIMIT + 1)), "gzip", 413, "inflates past"),  # a zip bomb, ~1 KB on the wire
        (zlib.compress(b"0" * (8 * LIMIT)), "deflate", 413, "inflates past"),
        (b"not gzip at all", "gzip", 400, "not valid gzip"),
        (gzip.compress(b"{}")[:-4], "gzip", 400, "truncated"),
        (b"{}", "br", 415, "unsupported Content-Encoding"),
    ],
)
def test_bad_compressed_bodies_are_refused(
    server: ServerThread, body: bytes, encoding: str, status: int, needle: str
) -> None:
    r = httpx.post(
        f"{server.url}/v2/models/cls/infer", content=body, headers={"Content-Encoding": encoding}, timeout=10
    )
    assert r.status_code == status and needle in r.json()["error"]
    assert httpx.post(f"{server.url}/v2/models/cls/infer", json=infer_doc(CONFIDENT)).status_code == 200


# ---- metrics ----------------------------------------------------------------------------------


def _samples(text: str, parse=text_string_to_metric_families) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parse(text) for s in f.samples}


def _v(version: str) -> tuple:
    return (("model", "cls"), ("version", version))


def test_metrics_standard_collectors_and_openmetrics(server: ServerThread) -> None:
    classic = httpx.get(server.url + "/metrics")
    assert classic.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = classic.text
    assert "\nprocess_resident_memory_bytes " in text and "\npython_info{" in text
    assert "python_gc_objects_collected_total" in text
    build = [k for k in _samples(text) if k[0] == "edgekit_build_info"]
    assert build and ("version", "0.1.0") in build[0][1]
    om = httpx.get(server.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")
    assert any(k[0] == "edgekit_build_info" for k in _samples(om.text, parse_openmetrics))


def test_per_version_counters_and_queue_compute_histograms(server: ServerThread) -> None:
    before = _samples(httpx.get(server.url + "/metrics").text)
    url = f"{server.url}/v2/models/cls/versions/1/infer"
    for _ in range(2):
        assert httpx.post(url, json=infer_doc(CONFIDENT)).status_code == 200
    bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 5], "data": [0] * 5}]}
    assert httpx.post(url, json=bad).status_code == 400
    assert httpx.post(url, content=b"{oops").status_code == 400  # refused before decoding: still counted
    after = _samples(httpx.get(server.url + "/metrics").text)

    def delta(name: str, labels: tuple) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert delta("edgekit_agent_model_requests_total", _v("1")) == 3  # the undecodable one never reached it
    assert delta("edgekit_agent_model_success_total", _v("1")) == 2
    assert delta("edgekit_agent_model_failure_total", _v("1")) == 2
    assert delta("edgekit_agent_queue_seconds_count", _v("1")) == 2
    assert delta("edgekit_agent_compute_seconds_count", _v("1")) == 2
    assert delta("edgekit_agent_compute_seconds_sum", _v("1")) > 0
    assert delta("edgekit_agent_model_success_total", _v("2")) == 0  # version 2 ran nothing


def test_model_info_follows_unload_and_load(server: ServerThread) -> None:
    def info() -> set[tuple]:
        text = httpx.get(server.url + "/metrics").text
        return {k[1] for k in _samples(text) if k[0] == "edgekit_agent_model_info"}

    both = {
        (("model", "cls"), ("sha256", "a" * 64), ("version", "1")),
        (("model", "cls"), ("sha256", "b" * 64), ("version", "2")),
    }
    assert info() == both
    assert httpx.post(server.url + "/v2/repository/models/cls/unload", headers=ADMIN).status_code == 200
    assert info() == set()
    assert httpx.post(server.url + "/v2/repository/models/cls/load", headers=ADMIN).status_code == 200
    assert info() == both
