"""Property-based suite for the OIP request decoder (issue 10): random and mutated requests, JSON and
binary-extension, sent to the real ASGI app, only ever get a 400 with an OIP error body or a valid
inference; never a 500, never a traceback in a body or a log line; the server keeps serving.

The properties drive the app in-process (starlette's TestClient: the full ASGI stack, the thread
pool, the real model); one more runs a sample over a real uvicorn server on loopback. Examples
are derandomized (the same in CI and locally) and bounded in number."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import fallback as fb
from agent.engine import Engine
from agent.models import ModelRegistry, load_model
from agent.oip import DATATYPE_TO_NUMPY, HEADER_LENGTH
from agent.server import ServerThread, build_app
from tests.agent.models import CONFIDENT
from tests.agent.oip_checks import captured_logs, infer_doc, strict_json

pytestmark = pytest.mark.timeout(300)

PROPS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
URL = "/v2/models/cls/infer"

# ---- strategies ---------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64, -1, 0]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "inf", "FP32", "INT8", "BOOL", "input"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
TENSOR_FIELDS = ("name", "datatype", "shape", "data", "parameters")
TOP_FIELDS = ("inputs", "outputs", "parameters", "id")


@st.composite
def valid_request(draw: Any) -> dict[str, Any]:
    """A request the model could serve: `input` [n, 4] of some datatype (FP32 is the model's)."""
    n = draw(st.integers(0, 3))
    datatype = draw(st.sampled_from(["FP32", "FP32", "FP16", "INT64", "INT8", "BOOL"]))
    if datatype == "BOOL":
        values: list[Any] = draw(st.lists(st.booleans(), min_size=n * 4, max_size=n * 4))
    elif datatype.startswith("FP"):
        values = draw(st.lists(st.floats(-1e4, 1e4, width=16), min_size=n * 4, max_size=n * 4))
    else:
        values = draw(st.lists(st.integers(-100, 100), min_size=n * 4, max_size=n * 4))
    doc: dict[str, Any] = {
        "inputs": [{"name": "input", "datatype": datatype, "shape": [n, 4], "data": values}]
    }
    if draw(st.booleans()):
        doc["outputs"] = [{"name": "probs"}]
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=8))
    return doc


def _nest(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def mutated_request(draw: Any) -> bytes:
    """A valid request, then a few edits: a tensor or top-level field set to any JSON value,
    dropped, or given an extreme shape; the data nested deeply; or the bytes truncated or flipped."""
    doc = draw(valid_request())
    tensor = doc["inputs"][0]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["tensor", "drop", "shape", "top", "nest", "dup"]))
        if op == "tensor":
            tensor[draw(st.sampled_from(TENSOR_FIELDS))] = draw(json_values)
        elif op == "drop":
            tensor.pop(draw(st.sampled_from(TENSOR_FIELDS)), None)
        elif op == "shape":
            dims = st.one_of(st.integers(0, 4), st.sampled_from([2**31, 2**32, 2**62, 2**63 - 1, 2**63, -1]))
            tensor["shape"] = draw(st.lists(dims, max_size=draw(st.sampled_from([3, 40, 100]))))
        elif op == "top":
            doc[draw(st.sampled_from(TOP_FIELDS))] = draw(json_values)
        elif op == "nest":
            tensor["data"] = _nest(tensor.get("data"), draw(st.sampled_from([2, 40, 70, 900])))
        else:
            doc["inputs"] = [tensor, dict(tensor)]
    body = json.dumps(doc).encode()
    cut = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if cut == "truncate" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif cut == "flip" and body:
        i = draw(st.integers(0, len(body) - 1))
        body = body[:i] + bytes([body[i] ^ draw(st.integers(1, 255))]) + body[i + 1 :]
    return body


@st.composite
def binary_request(draw: Any) -> tuple[bytes, dict[str, str]]:
    """A binary-extension request (JSON header + raw bytes), valid or with its sizes, header
    length, payload or datatype mutated."""
    n = draw(st.integers(0, 3))
    datatype = draw(st.sampled_from(list(DATATYPE_TO_NUMPY)))
    itemsize = np.dtype(DATATYPE_TO_NUMPY[datatype]).itemsize
    size = n * 4 * itemsize
    shape: Any = [n, 4]
    if draw(st.booleans()):
        size = draw(st.one_of(st.integers(-5, 200), st.sampled_from([2**62, 2**64, 0]), json_values))
    if draw(st.booleans()):
        shape = draw(
            st.one_of(st.lists(st.sampled_from([0, 1, 4, 2**62, 2**63 - 1, 2**32]), max_size=6), json_values)
        )
    head_doc = {
        "inputs": [
            {"name": "input", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}
        ],
        "parameters": {"binary_data_output": draw(st.booleans())},
    }
    head = json.dumps(head_doc).encode()
    exact = size if isinstance(size, int) and 0 <= size <= 256 else None
    if exact is not None and draw(st.integers(0, 2)):  # mostly the announced bytes: reach the model
        payload = draw(st.binary(min_size=exact, max_size=exact))
    else:
        payload = draw(st.binary(max_size=160))
    hlen: Any = len(head)
    if draw(st.integers(0, 5)) == 0:
        hlen = draw(
            st.one_of(st.integers(-10, len(head) + 400), st.sampled_from(["", "x", "1e3", "9" * 30, " 7"]))
        )
    return head + payload, {HEADER_LENGTH: str(hlen)}


# ---- the app under test -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[Engine]:
    reg = ModelRegistry()
    reg.put(load_model("cls", model_dir / "cls_v1.onnx", "1"))
    e = Engine(reg, default_policy=fb.Policy(mode=fb.LOCAL_ONLY))
    yield e
    e.close()


@pytest.fixture(scope="module")
def client(engine: Engine) -> Iterator[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette suggests httpx2 for its TestClient; httpx works
        from starlette.testclient import TestClient

        with TestClient(build_app(engine, max_body=1 << 20), raise_server_exceptions=True) as c:
            yield c


def check(status: int, text: str) -> None:
    """The property: a valid inference or a 400 with an OIP error body, nothing else."""
    assert status in (200, 400), f"{status}: {text[:300]}"
    assert "Traceback" not in text
    doc = strict_json(text)
    if status == 400:
        assert set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"]
    else:
        assert doc["model_name"] == "cls" and isinstance(doc["outputs"], list)


def check_binary_aware(r: Any) -> None:
    hlen = r.headers.get(HEADER_LENGTH)
    check(r.status_code, r.content[: int(hlen)].decode() if hlen else r.text)


def still_serving(client: Any) -> None:
    r = client.post(URL, json=infer_doc(CONFIDENT))
    assert r.status_code == 200 and np.argmax(r.json()["outputs"][0]["data"]) == 0


# ---- properties ---------------------------------------------------------------------------------


@PROPS
@given(doc=json_values)
def test_any_json_document_is_refused_or_served(client: Any, doc: Any) -> None:
    with captured_logs() as logs:
        r = client.post(URL, content=json.dumps(doc).encode())
    check(r.status_code, r.text)
    assert logs.tracebacks() == []


@PROPS
@given(body=mutated_request())
def test_mutated_json_requests_are_refused_or_served(client: Any, body: bytes) -> None:
    with captured_logs() as logs:
        r = client.post(URL, content=body)
    check(r.status_code, r.text)
    assert logs.tracebacks() == []


@PROPS
@given(req=binary_request())
def test_binary_extension_requests_are_refused_or_served(
    client: Any, req: tuple[bytes, dict[str, str]]
) -> None:
    body, headers = req
    with captured_logs() as logs:
        r = client.post(URL, content=body, headers=headers)
    check_binary_aware(r)
    assert logs.tracebacks() == []


@PROPS
@given(body=st.binary(max_size=300), hlen=st.one_of(st.none(), st.integers(0, 300)))
def test_random_bytes_are_refused(client: Any, body: bytes, hlen: int | None) -> None:
    headers = {HEADER_LENGTH: str(hlen)} if hlen is not None else {}
    r = client.post(URL, content=body, headers=headers)
    check_binary_aware(r)


@PROPS
@given(doc=valid_request())
def test_valid_requests_for_the_models_datatype_are_served(client: Any, doc: dict[str, Any]) -> None:
    r = client.post(URL, json=doc)
    if doc["inputs"][0]["datatype"] == "FP32":
        assert r.status_code == 200, r.text
        probs = np.array(strict_json(r.text)["outputs"][0]["data"], np.float32).reshape(-1, 3)
        assert probs.shape[0] == doc["inputs"][0]["shape"][0]
    else:
        assert r.status_code == 400 and "datatype" in r.json()["error"]


def test_app_still_serves_after_the_properties(client: Any) -> None:
    still_serving(client)


# ---- the same over a real server on loopback ----------------------------------------------------


@pytest.fixture(scope="module")
def loopback(engine: Engine) -> Iterator[tuple[ServerThread, httpx.Client]]:
    srv = ServerThread(build_app(engine, max_body=1 << 20)).start()
    with httpx.Client(base_url=srv.url, timeout=20) as c:
        yield srv, c
    srv.stop()


@settings(PROPS, max_examples=40)
@given(body=st.one_of(mutated_request(), json_values.map(lambda d: json.dumps(d).encode())))
def test_real_uvicorn_on_loopback_refuses_or_serves(
    loopback: tuple[ServerThread, httpx.Client], body: bytes
) -> None:
    _, c = loopback
    with captured_logs() as logs:
        r = c.post(URL, content=body)
    check(r.status_code, r.text)
    assert logs.tracebacks() == []


def test_real_server_still_up(loopback: tuple[ServerThread, httpx.Client]) -> None:
    _, c = loopback
    assert c.get("/v2/health/ready").status_code == 200
    still_serving(c)
