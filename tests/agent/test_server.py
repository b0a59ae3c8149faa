"""The OIP server: V2 routes, error bodies, several models, a third-party client (tritonclient)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import fallback as fb
from agent.engine import Engine
from agent.models import ModelRegistry, load_model
from agent.server import ServerThread, build_app
from tests.agent.models import CONFIDENT

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[ServerThread]:
    reg = ModelRegistry()
    reg.put(load_model("cls", model_dir / "cls_v1.onnx", "1"))
    reg.put(load_model("cls2", model_dir / "cls_v2.onnx", "2"))
    engine = Engine(reg, default_policy=fb.Policy(mode=fb.LOCAL_ONLY))
    st = ServerThread(build_app(engine, max_body=1 << 20)).start()
    yield st
    st.stop()
    engine.close()


def _infer(url: str, model: str, doc: dict) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{model}/infer", json=doc, timeout=10)


def test_health_and_metadata(server: ServerThread) -> None:
    assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    assert httpx.get(server.url + "/v2").json()["name"] == "edgekit-agent"
    meta = httpx.get(server.url + "/v2/models/cls").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"][0]["name"] == "probs"
    assert httpx.get(server.url + "/v2/models/cls/ready").status_code == 200


def test_json_infer_two_models(server: ServerThread) -> None:
    doc = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": CONFIDENT.ravel().tolist()}]
    }
    r1, r2 = _infer(server.url, "cls", doc), _infer(server.url, "cls2", doc)
    assert r1.status_code == r2.status_code == 200
    b1, b2 = r1.json(), r2.json()
    assert b1["parameters"]["served_by"] == "local" and b1["model_version"] == "1"
    assert b2["model_version"] == "2"
    p1, p2 = np.array(b1["outputs"][0]["data"]), np.array(b2["outputs"][0]["data"])
    assert p1.argmax() == 0 and not np.allclose(p1, p2)


@pytest.mark.parametrize(
    ("doc", "status", "needle"),
    [
        (
            {"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]},
            400,
            "unknown input",
        ),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 5], "data": [0] * 5}]}, 400, "shape"),
        (
            {"inputs": [{"name": "input", "datatype": "INT64", "shape": [1, 4], "data": [0] * 4}]},
            400,
            "datatype",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0] * 3}]},
            400,
            "3 values",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "WAT", "shape": [1, 4], "data": [0] * 4}]},
            400,
            "datatype",
        ),
        ({"nothing": 1}, 400, "inputs"),
    ],
)
def test_oip_error_bodies(server: ServerThread, doc: dict, status: int, needle: str) -> None:
    r = _infer(server.url, "cls", doc)
    assert r.status_code == status
    body = r.json()
    assert set(body) == {"error"} and needle in body["error"]
    assert "Traceback" not in r.text


def test_unknown_model_404_and_bad_json_400(server: ServerThread) -> None:
    r = _infer(server.url, "ghost", {"inputs": []})
    assert r.status_code == 404 and "ghost" in r.json()["error"]
    assert httpx.get(server.url + "/v2/models/ghost").status_code == 404
    r = httpx.post(server.url + "/v2/models/cls/infer", content=b"{not json", timeout=5)
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.get(server.url + "/v2/nowhere")
    assert r.status_code == 404 and "error" in r.json()


def test_oversized_413(server: ServerThread) -> None:
    big = b"x" * (2 << 20)
    r = httpx.post(server.url + "/v2/models/cls/infer", content=big, timeout=10)
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_tritonclient_http(server: ServerThread) -> None:
    import tritonclient.http as th

    client = th.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cls")
    meta = client.get_model_metadata("cls")
    assert meta["inputs"][0]["name"] == "input"
    for binary in (True, False):
        inp = th.InferInput("input", [2, 4], "FP32")
        inp.set_data_from_numpy(np.vstack([CONFIDENT, CONFIDENT * 0]), binary_data=binary)
        out = th.InferRequestedOutput("probs", binary_data=binary)
        res = client.infer("cls", [inp], outputs=[out])
        probs = res.as_numpy("probs")
        assert probs.shape == (2, 3)
        assert probs[0].argmax() == 0 and np.allclose(probs[1], 1 / 3, atol=1e-6)
        assert res.get_response()["parameters"]["served_by"] == "local"
    with pytest.raises(th.InferenceServerException) as ei:
        bad = th.InferInput("input", [1, 5], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 5), np.float32))
        client.infer("cls", [bad])
    assert "shape" in str(ei.value)
    client.close()


def test_metrics_exposition(server: ServerThread) -> None:
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}
    assert _infer(server.url, "cls", doc).status_code == 200
    text = httpx.get(server.url + "/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    ok = (("model", "cls"), ("outcome", "ok"), ("served_by", "local"))
    assert samples[("edgekit_agent_requests_total", ok)] >= 1
    inf = (("le", "+Inf"), ("model", "cls"), ("served_by", "local"))
    assert samples[("edgekit_agent_request_seconds_bucket", inf)] >= 1
