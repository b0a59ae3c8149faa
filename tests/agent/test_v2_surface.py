"""The KServe V2 / Triton HTTP surface beyond inference, driven by tritonclient[http]: model config,
versions side by side with a version policy, the repository extension (index, unload, load,
both ways), statistics, classification. Plain httpx where a client hides the status or body."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent import fallback as fb
from agent import versions
from agent.engine import Engine
from agent.models import ModelRegistry, load_model
from agent.server import ServerThread, build_app
from edgekit.errors import ConfigError
from edgekit.modelcard import ModelCard, TensorSpec
from tests.agent.models import CONFIDENT
from tests.agent.oip_checks import ADMIN_TOKEN, infer_doc

pytestmark = pytest.mark.timeout(60)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
X = np.vstack([CONFIDENT, np.array([[0.0, 3.0, 1.0, 0.0]], np.float32)])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def expected(x: np.ndarray, bias: float) -> np.ndarray:
    """What tests/agent/models.classifier(scale=1, bias) computes."""
    return _softmax(x[:, :3] + np.array([bias, 0, 0], np.float32))


def cube_model(path: Path) -> Path:
    """x float32 [N, 4] -> y float32 [N, 2, 2]: a rank-3 output classification cannot apply to."""
    shape = numpy_helper.from_array(np.array([-1, 2, 2], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "cube",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 2])],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def served(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerThread, Engine]]:
    tmp = tmp_path_factory.mktemp("v2")
    card = ModelCard(
        "cls",
        [TensorSpec("input", "float32", ["N", 4])],
        [TensorSpec("probs", "float32", ["N", 3])],
        labels=["cat", "dog", "bird"],
    )
    reg = ModelRegistry({"cls": versions.VersionPolicy(latest=2)})
    # Three activations under "latest 2": version 1 is evicted, 2 and 3 stay side by side.
    reg.put(load_model("cls", model_dir / "cls_v1.onnx", "1"))
    reg.put(load_model("cls", model_dir / "cls_v2.onnx", "2"))
    reg.put(load_model("cls", model_dir / "cls_v1.onnx", "3", card=card))
    reg.put(load_model("cube", cube_model(tmp / "cube.onnx"), "1"))
    engine = Engine(reg, default_policy=fb.Policy(mode=fb.LOCAL_ONLY))
    st = ServerThread(build_app(engine, max_body=1 << 20, admin_token=ADMIN_TOKEN)).start()
    yield st, engine
    st.stop()
    engine.close()


@pytest.fixture
def client(served: tuple[ServerThread, Engine]) -> Iterator[object]:
    import tritonclient.http as th

    c = th.InferenceServerClient(url=served[0].url.removeprefix("http://"))
    yield c
    c.close()


def _infer(client, model: str, version: str = "", class_count: int = 0, binary: bool = True):
    import tritonclient.http as th

    inp = th.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=binary)
    out = th.InferRequestedOutput("probs", binary_data=binary, class_count=class_count)
    return client.infer(model, [inp], outputs=[out], model_version=version)


# ---- version policy (pure) -------------------------------------------------------------------


def test_version_policy_keeps_what_it_says() -> None:
    order = ["1", "2", "3", "4"]
    assert versions.to_keep(versions.DEFAULT, order) == ["4"]
    assert versions.to_keep(versions.VersionPolicy(latest=2), order) == ["3", "4"]
    assert versions.to_keep(versions.ALL, order) == order
    specific = versions.parse_policy({"specific": [1, "3"]}, "x")
    assert versions.to_keep(specific, order) == ["1", "3", "4"]  # the active one is always kept
    assert versions.policies_from_config({"a": {"version_policy": {"latest": 3}}, "b": {}}) == {
        "a": versions.VersionPolicy(latest=3)
    }


@pytest.mark.parametrize("raw", [{"latest": 0}, {"latest": True}, {"specific": []}, {"newest": 1}, "some"])
def test_bad_version_policy_is_a_config_error_naming_the_key(raw: object) -> None:
    with pytest.raises(ConfigError, match=r"\[models.cls\] version_policy"):
        versions.policies_from_config({"cls": {"version_policy": raw}})


# ---- versions over HTTP ------------------------------------------------------------------------


def test_versions_side_by_side_and_the_url_version_is_honoured(client, served) -> None:
    import tritonclient.http as th

    url = served[0].url
    meta = client.get_model_metadata("cls")
    assert meta["versions"] == ["2", "3"]
    assert client.get_model_metadata("cls", "2")["versions"] == ["2", "3"]
    r2, r3, plain = _infer(client, "cls", "2"), _infer(client, "cls", "3"), _infer(client, "cls")
    np.testing.assert_allclose(r2.as_numpy("probs"), expected(X, 0.5), atol=1e-6)
    np.testing.assert_allclose(r3.as_numpy("probs"), expected(X, 0.0), atol=1e-6)
    assert r2.get_response()["model_version"] == "2" and r3.get_response()["model_version"] == "3"
    assert plain.get_response()["model_version"] == "3"  # the active version answers unversioned
    assert client.is_model_ready("cls", "2") and not client.is_model_ready("cls", "1")
    # Version 1 was evicted by the policy, and 99 never existed: 404 with an OIP error body.
    for v in ("1", "99"):
        r = httpx.post(f"{url}/v2/models/cls/versions/{v}/infer", json=infer_doc(X), timeout=10)
        assert r.status_code == 404 and set(r.json()) == {"error"}
        assert f"version '{v}' is not loaded" in r.json()["error"] and "2, 3" in r.json()["error"]
        for route in ("", "/ready", "/config", "/stats"):
            assert httpx.get(f"{url}/v2/models/cls/versions/{v}{route}").status_code == 404
    with pytest.raises(th.InferenceServerException, match="not loaded"):
        _infer(client, "cls", "99")


def test_model_config_is_tritons_shape(client) -> None:
    cfg = client.get_model_config("cls")
    assert cfg["name"] == "cls" and cfg["platform"] == "onnxruntime_onnx" and cfg["backend"] == "onnxruntime"
    assert cfg["max_batch_size"] == 0
    assert cfg["input"] == [
        {"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [-1, 4]}
    ]
    assert cfg["output"] == [{"name": "probs", "data_type": "TYPE_FP32", "dims": [-1, 3]}]
    assert cfg["version_policy"] == {"latest": {"num_versions": 2}}
    assert client.get_model_config("cls", "2")["name"] == "cls"
    assert client.get_model_config("cube")["output"][0]["dims"] == [-1, 2, 2]


def test_server_metadata_lists_the_extensions(client) -> None:
    meta = client.get_server_metadata()
    assert meta["name"] == "edgekit-agent"
    for ext in (
        "binary_tensor_data",
        "classification",
        "model_configuration",
        "model_repository",
        "statistics",
    ):
        assert ext in meta["extensions"]


# ---- classification --------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_classification_returns_tritons_strings(client, binary: bool) -> None:
    probs = expected(X, 0.0)
    res = _infer(client, "cls", "3", class_count=2, binary=binary)  # version 3's card has labels
    top = res.as_numpy("probs")
    assert top.shape == (2, 2) and res.get_output("probs")["datatype"] == "BYTES"
    for b in range(2):
        order = np.argsort(-probs[b])[:2]
        want = [f"{probs[b, i]:f}:{i}:{['cat', 'dog', 'bird'][i]}" for i in order]
        got = [v.decode() if isinstance(v, bytes) else v for v in top[b]]
        assert [g.rsplit(":", 2)[1:] for g in got] == [w.rsplit(":", 2)[1:] for w in want]
        np.testing.assert_allclose([float(g.split(":")[0]) for g in got], probs[b, order], atol=1e-6)
    # No card labels on version 2: "score:index"; k beyond the classes is clamped to 3.
    top = _infer(client, "cls", "2", class_count=10).as_numpy("probs")
    assert top.shape == (2, 3) and all(len(v.split(b":")) == 2 for v in top.ravel())


def test_classification_that_cannot_apply_is_a_400(client, served) -> None:
    import tritonclient.http as th

    inp = th.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(CONFIDENT)
    with pytest.raises(th.InferenceServerException, match="classification needs scores shaped"):
        client.infer("cube", [inp], outputs=[th.InferRequestedOutput("y", class_count=1)])
    doc = {**infer_doc(X), "outputs": [{"name": "probs", "parameters": {"classification": 0}}]}
    r = httpx.post(f"{served[0].url}/v2/models/cls/infer", json=doc, timeout=10)
    assert r.status_code == 400 and "classification" in r.json()["error"]
    doc["outputs"] = [{"name": "nope", "parameters": {"classification": 1}}]
    r = httpx.post(f"{served[0].url}/v2/models/cls/infer", json=doc, timeout=10)
    assert r.status_code == 400 and "nope" in r.json()["error"]


# ---- statistics ------------------------------------------------------------------------------


def test_statistics_count_each_phase(client, served) -> None:
    engine = served[1]
    before = client.get_inference_statistics("cls", "2")["model_stats"][0]
    for _ in range(3):
        _infer(client, "cls", "2")
    bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 5], "data": [0] * 5}]}
    assert httpx.post(f"{served[0].url}/v2/models/cls/versions/2/infer", json=bad).status_code == 400
    after = client.get_inference_statistics("cls", "2")["model_stats"]
    assert [(s["name"], s["version"]) for s in after] == [("cls", "2")]
    s = after[0]
    assert s["inference_count"] - before["inference_count"] == 3
    assert s["execution_count"] - before["execution_count"] == 3
    st, st0 = s["inference_stats"], before["inference_stats"]
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert st[phase]["count"] - st0[phase]["count"] == 3, phase
        assert st[phase]["ns"] > st0[phase]["ns"], phase
    assert st["fail"]["count"] - st0["fail"]["count"] == 1
    assert s["last_inference"] > 0
    everything = client.get_inference_statistics()["model_stats"]
    assert {(m["name"], m["version"]) for m in everything} == {("cls", "2"), ("cls", "3"), ("cube", "1")}
    assert {(m["name"], m["version"]) for m in client.get_inference_statistics("cls")["model_stats"]} == {
        ("cls", "2"),
        ("cls", "3"),
    }
    assert httpx.get(f"{served[0].url}/v2/models/ghost/stats").status_code == 404
    assert engine.stats.snapshot([("cls", "2")])["model_stats"][0]["inference_count"] == s["inference_count"]


# ---- repository: index, unload, load ---------------------------------------------------------


def test_repository_unload_then_load_both_ways(client, served) -> None:
    import tritonclient.http as th

    url = served[0].url
    index = client.get_model_repository_index(headers=ADMIN)
    assert {"name": "cls", "version": "2", "state": "READY"} in index
    assert {"name": "cls", "version": "3", "state": "READY"} in index
    for _ in range(2):  # unload -> load, twice: it works both ways, again and again
        client.unload_model("cls", headers=ADMIN)
        assert not client.is_model_ready("cls")
        r = httpx.post(f"{url}/v2/models/cls/versions/2/infer", json=infer_doc(X), timeout=10)
        assert r.status_code == 404
        index = client.get_model_repository_index(headers=ADMIN)
        assert {"name": "cls", "state": "UNAVAILABLE", "reason": "unloaded"} in index
        ready_only = httpx.post(f"{url}/v2/repository/index", json={"ready": True}, headers=ADMIN).json()
        assert all(m["state"] == "READY" for m in ready_only) and {m["name"] for m in ready_only} == {"cube"}
        client.load_model("cls", headers=ADMIN)
        assert client.get_model_metadata("cls")["versions"] == ["2", "3"]
        np.testing.assert_allclose(_infer(client, "cls", "2").as_numpy("probs"), expected(X, 0.5), atol=1e-6)
    client.load_model("cls", headers=ADMIN)  # loading a loaded model is success, as in Triton
    with pytest.raises(th.InferenceServerException, match="not in the repository"):
        client.load_model("ghost", headers=ADMIN)
    with pytest.raises(th.InferenceServerException, match="not supported"):
        client.load_model("cls", headers=ADMIN, config='{"max_batch_size": 8}')
    with pytest.raises(th.InferenceServerException, match="admin token"):
        client.unload_model("cls")
    assert client.is_model_ready("cls")
