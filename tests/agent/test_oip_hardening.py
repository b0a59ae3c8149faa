"""Issue 10, OIP server: bad requests are 400s (never 500s or tracebacks), non-finite outputs are
strict JSON, aborted uploads are counted not logged, repository routes need the admin token."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent import fallback as fb
from agent.config import load_agent_config
from agent.engine import Engine
from agent.models import ModelRegistry, load_model
from agent.oip import HEADER_LENGTH, decode_response
from agent.server import ServerThread, build_app
from edgekit.errors import ConfigError
from tests.agent.models import CONFIDENT
from tests.agent.oip_checks import (
    ADMIN_TOKEN,
    captured_logs,
    infer_doc,
    nonfinite_model,
    start_serve_logged,
    strict_json,
)
from tests.support.net import free_port

pytestmark = pytest.mark.timeout(120)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _engine(model_dir: Path) -> Engine:
    reg = ModelRegistry()
    reg.put(load_model("cls", model_dir / "cls_v1.onnx", "1"))
    reg.put(load_model("nonfinite", nonfinite_model(model_dir / "nonfinite.onnx"), "1"))
    return Engine(reg, default_policy=fb.Policy(mode=fb.LOCAL_ONLY))


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[ServerThread]:
    engine = _engine(model_dir)
    st = ServerThread(build_app(engine, max_body=1 << 20, admin_token=ADMIN_TOKEN)).start()
    yield st
    st.stop()
    engine.close()


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/cls/infer", content=body, headers=headers or {}, timeout=20)


def _tensor(**fields) -> bytes:
    t = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4], **fields}
    return json.dumps({"inputs": [{k: v for k, v in t.items() if v is not ...}]}).encode()


def _binary(shape: list[int], size: int, payload: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": shape,
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    return head + payload, {HEADER_LENGTH: str(len(head))}


BAD_REQUESTS = {
    # (body, extra headers, a word the error must contain)
    "nested 100000 deep": (b"[" * 100_000 + b"]" * 100_000, {}, "nested"),
    "nested inside data": (_tensor(data=json.loads("[" * 500 + "1" + "]" * 500)), {}, "nested"),
    "data 40 deep (more than any rank)": (_tensor(data=json.loads("[" * 40 + "1" + "]" * 40)), {}, "nested"),
    "shape 2**62 x 4 (np.prod wraps to 0)": (_tensor(shape=[2**62, 4], data=[]), {}, "elements"),
    "shape 2**32 x 2**32 (np.prod wraps to 0)": (_tensor(shape=[2**32, 2**32], data=[]), {}, "elements"),
    "100 dims": (_tensor(shape=[1] * 100, data=[1]), {}, "shape"),
    "dim beyond int64": (_tensor(shape=[2**64, 1], data=[1]), {}, "shape"),
    "negative dim": (_tensor(shape=[-1, 4]), {}, "shape"),
    "true as a dim": (_tensor(shape=[True, 4]), {}, "shape"),
    "3 values for 4": (_tensor(data=[1, 2, 3]), {}, "3 values"),
    "string data": (_tensor(data="1234"), {}, "array"),
    "object data": (_tensor(data={"a": 1}), {}, "array"),
    "null data": (_tensor(data=None), {}, "data"),
    "no data": (_tensor(data=...), {}, "data"),
    "ragged data": (_tensor(data=[[1, 2], [3]]), {}, "ragged"),
    "strings in FP32": (_tensor(data=["a", "b", "c", "d"]), {}, "numbers"),
    "null in FP32": (_tensor(data=[1, None, 3, 4]), {}, "FP32"),
    "bools in FP32": (_tensor(data=[True, False, True, False]), {}, "true/false"),
    "FP32 overflow": (_tensor(data=[1e39, 0, 0, 0]), {}, "range"),
    "INT8 out of range": (_tensor(datatype="INT8", data=[1000, 0, 0, 0]), {}, "INT8 range"),
    "INT64 beyond 64 bits": (_tensor(datatype="INT64", data=[2**70, 0, 0, 0]), {}, "INT64"),
    "fractions in INT32": (_tensor(datatype="INT32", data=[0.5, 0, 0, 0]), {}, "integers"),
    "numbers in BOOL": (_tensor(datatype="BOOL", data=[1, 0, 1, 0]), {}, "true/false"),
    "unknown datatype": (_tensor(datatype="FP8"), {}, "datatype"),
    "name not a string": (_tensor(name=7), {}, "name"),
    "inputs not a list": (json.dumps({"inputs": {"a": 1}}).encode(), {}, "inputs"),
    "request is a list": (b"[1, 2]", {}, "object"),
    "outputs parameters a list": (
        json.dumps({**json.loads(_tensor()), "outputs": [{"name": "probs", "parameters": [1]}]}).encode(),
        {},
        "outputs",
    ),
    "binary_data_output a string": (
        json.dumps({**json.loads(_tensor()), "parameters": {"binary_data_output": "yes"}}).encode(),
        {},
        "binary_data_output",
    ),
    "huge header length": (_tensor(), {HEADER_LENGTH: "9" * 5000}, HEADER_LENGTH),
    "header length past the body": (_tensor(), {HEADER_LENGTH: "99999999"}, HEADER_LENGTH),
    "negative header length": (_tensor(), {HEADER_LENGTH: "-1"}, HEADER_LENGTH),
    "binary size mismatch": (*_binary([1, 4], 12, b"\0" * 12), "binary_data_size"),
    "binary truncated": (*_binary([1, 4], 16, b"\0" * 8), "truncated"),
    "binary trailing bytes": (*_binary([1, 4], 16, b"\0" * 20), "bytes"),
    "binary 2**62 elements": (*_binary([2**62, 4], 0, b""), "binary_data_size"),
    "not JSON": (b"{not json", {}, "JSON"),
    "not UTF-8": (b"\xff\xfe{}", {}, "JSON"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_request_is_a_400_with_an_error_body_and_no_traceback(server: ServerThread, case: str) -> None:
    body, headers, needle = BAD_REQUESTS[case]
    with captured_logs() as logs:
        r = _post(server.url, body, headers)
    assert r.status_code == 400, r.text[:300]
    doc = strict_json(r.text)
    assert set(doc) == {"error"} and needle.lower() in doc["error"].lower(), doc
    assert "Traceback" not in r.text and len(r.text) < 1000
    assert logs.tracebacks() == []


def _raw_response(port: int, request: bytes) -> tuple[str, bytes]:
    """Send raw bytes; return (status line + headers, body) of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += s.recv(65536)
    return head.decode("latin-1"), body


def test_huge_content_length_is_413(server: ServerThread) -> None:
    head, body = _raw_response(
        server.port,
        b"POST /v2/models/cls/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999999999999999\r\n\r\n{}",
    )
    assert head.startswith("HTTP/1.1 413"), head
    assert "limit" in strict_json(body)["error"]


def test_server_still_serves_after_the_bad_requests(server: ServerThread) -> None:
    for body, headers, _ in BAD_REQUESTS.values():
        _post(server.url, body, headers)
    r = httpx.post(f"{server.url}/v2/models/cls/infer", json=infer_doc(CONFIDENT), timeout=10)
    assert r.status_code == 200 and np.argmax(r.json()["outputs"][0]["data"]) == 0


# ---- NaN / Infinity outputs ---------------------------------------------------------------------

X_NONFINITE = np.array([[0.0, -1.0, 1.0, 2.0]], np.float32)


def test_nonfinite_outputs_are_strict_json_strings(server: ServerThread) -> None:
    r = httpx.post(f"{server.url}/v2/models/nonfinite/infer", json=infer_doc(X_NONFINITE, "x"), timeout=10)
    assert r.status_code == 200
    out = {o["name"]: o["data"] for o in strict_json(r.text)["outputs"]}  # bare NaN would raise here
    assert out["log"][:3] == ["-Infinity", "NaN", 0.0]
    assert out["inv"][:2] == ["Infinity", -1.0]
    # The client side reads them back as IEEE values without special code.
    _, arrays = decode_response(r.content, None)
    assert np.isneginf(arrays["log"][0, 0]) and np.isnan(arrays["log"][0, 1])
    assert np.isposinf(arrays["inv"][0, 0])


def test_nonfinite_outputs_with_tritonclient_json_and_binary(server: ServerThread) -> None:
    import tritonclient.http as th

    client = th.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        for binary in (False, True):
            inp = th.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(X_NONFINITE, binary_data=binary)
            outs = [th.InferRequestedOutput(n, binary_data=binary) for n in ("log", "inv")]
            res = client.infer("nonfinite", [inp], outputs=outs)
            with np.errstate(divide="ignore", invalid="ignore"):
                np.testing.assert_array_equal(res.as_numpy("log"), np.log(X_NONFINITE))
                np.testing.assert_array_equal(res.as_numpy("inv"), 1 / X_NONFINITE)
    finally:
        client.close()


def test_nonfinite_inputs_are_read_from_their_string_spellings(server: ServerThread) -> None:
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ["NaN", "Infinity", "-inf", 1]}]
    }
    r = httpx.post(f"{server.url}/v2/models/nonfinite/infer", json=doc, timeout=10)
    assert r.status_code == 200
    inv = {o["name"]: o["data"] for o in strict_json(r.text)["outputs"]}["inv"]
    assert inv == ["NaN", 0.0, -0.0, 1.0]


# ---- aborted uploads ----------------------------------------------------------------------------


def _aborted_upload(port: int, reset: bool) -> None:
    """Announce a 1 MB body, wait until the server is reading it (100 Continue), send 10 bytes, hang up."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(
            b"POST /v2/models/cls/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n"
        )
        assert s.recv(1024).startswith(b"HTTP/1.1 100")
        s.sendall(b'{"inputs":')
        if reset:  # RST instead of FIN: both are a client gone mid-body
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    finally:
        s.close()


def _metric(url: str, name: str) -> float | None:
    m = re.search(rf"^{name} (\S+)$", httpx.get(url + "/metrics", timeout=10).text, re.M)
    return float(m.group(1)) if m else None


def test_300_aborted_uploads_write_no_tracebacks(tmp_path: Path, model_dir: Path) -> None:
    err = tmp_path / "serve.log"
    sp = start_serve_logged([model_dir / "cls_v1.onnx"], ["cls"], err)
    try:
        for i in range(300):
            _aborted_upload(sp.port, reset=bool(i % 2))
        # Wait until the server has dealt with every one (counted; or, before the fix, logged).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if _metric(sp.url, "edgekit_agent_aborted_requests_total") == 300:
                break
            if err.read_text(errors="replace").count("Traceback") >= 300:
                break
            time.sleep(0.05)
        assert "Traceback" not in err.read_text(errors="replace")
        assert _metric(sp.url, "edgekit_agent_aborted_requests_total") == 300
        r = httpx.post(f"{sp.url}/v2/models/cls/infer", json=infer_doc(CONFIDENT), timeout=10)
        assert r.status_code == 200
    finally:
        sp.stop()
    assert len(err.read_text(errors="replace").splitlines()) < 10  # nothing per aborted upload (300 of them)


# ---- repository routes need the admin token -----------------------------------------------------

REPO_ROUTES = [
    "/v2/repository/models/cls/unload",
    "/v2/repository/models/cls/load",
    "/v2/repository/index",
    "/v2/repository/models/cls/config",  # no such route: still refused before it is looked up
]


@pytest.mark.parametrize("path", REPO_ROUTES)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": ADMIN_TOKEN}],
    ids=["none", "wrong", "not-bearer"],
)
def test_repository_routes_refuse_without_the_token(server: ServerThread, path: str, headers) -> None:
    r = httpx.post(server.url + path, headers=headers, timeout=10)
    assert r.status_code == 401 and "admin token" in strict_json(r.text)["error"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert server_serves(server.url, "cls")


def server_serves(url: str, model: str) -> bool:
    return (
        httpx.post(f"{url}/v2/models/{model}/infer", json=infer_doc(CONFIDENT), timeout=10).status_code == 200
    )


def test_unload_index_load_with_the_token(model_dir: Path) -> None:
    engine = _engine(model_dir)
    srv = ServerThread(build_app(engine, admin_token=ADMIN_TOKEN)).start()
    try:
        # Inference, health, metadata and metrics stay open (the KServe norm).
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/cls", "/metrics"):
            assert httpx.get(srv.url + path).status_code == 200
        assert httpx.post(srv.url + "/v2/repository/models/cls/unload", headers=ADMIN).status_code == 200
        assert not server_serves(srv.url, "cls")
        index = httpx.post(srv.url + "/v2/repository/index", headers=ADMIN).json()
        assert {"name": "cls", "state": "UNAVAILABLE", "reason": "unloaded"} in index
        assert {"name": "nonfinite", "version": "1", "state": "READY"} in index
        assert httpx.post(srv.url + "/v2/repository/models/cls/load", headers=ADMIN).status_code == 200
        assert server_serves(srv.url, "cls")
        r = httpx.post(srv.url + "/v2/repository/models/ghost/load", headers=ADMIN)
        assert r.status_code == 404 and "ghost" in r.json()["error"]
        r = httpx.post(srv.url + "/v2/repository/models/cls/config", headers=ADMIN)
        assert r.status_code == 404
    finally:
        srv.stop()
        engine.close()


def test_no_token_configured_disables_repository_routes(model_dir: Path) -> None:
    engine = _engine(model_dir)
    srv = ServerThread(build_app(engine)).start()
    try:
        for headers in ({}, ADMIN):
            r = httpx.post(srv.url + "/v2/repository/models/cls/unload", headers=headers)
            assert r.status_code == 403 and "admin_token" in strict_json(r.text)["error"]
        assert server_serves(srv.url, "cls")
    finally:
        srv.stop()
        engine.close()


def _agent_toml(tmp_path: Path, model: Path, port: int, server_extra: str = "") -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(
        f'[agent]\ndevice = "dev-1"\ndata_dir = "{tmp_path / "data"}"\n'
        f"[server]\nport = {port}\n{server_extra}\n[mqtt]\nenabled = false\n"
        f'[models.cls]\npath = "{model}"\npolicy = "local-only"\n'
    )
    return p


def test_agent_reads_the_token_from_file_or_env(tmp_path: Path, model_dir: Path, monkeypatch) -> None:
    from agent.daemon import Agent

    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    cfg = load_agent_config(
        _agent_toml(tmp_path, model_dir / "cls_v1.onnx", free_port(), f'admin_token_file = "{token_file}"')
    )
    assert cfg["server"]["admin_token"] == ADMIN_TOKEN
    monkeypatch.setenv("EDGEKIT_SERVER__ADMIN_TOKEN", "env-token-0123456789abcdef")
    cfg = load_agent_config(_agent_toml(tmp_path, model_dir / "cls_v1.onnx", free_port()))
    assert cfg["server"]["admin_token"] == "env-token-0123456789abcdef"
    agent = Agent(cfg)
    agent.start()
    try:
        url = agent.server.url  # type: ignore[union-attr]
        assert httpx.post(url + "/v2/repository/models/cls/unload", headers=ADMIN).status_code == 401
        assert server_serves(url, "cls")
        ok = {"Authorization": "Bearer env-token-0123456789abcdef"}
        assert httpx.post(url + "/v2/repository/models/cls/unload", headers=ok).status_code == 200
    finally:
        agent.stop()


def test_short_or_unreadable_token_is_a_config_error(tmp_path: Path, model_dir: Path) -> None:
    model = model_dir / "cls_v1.onnx"
    with pytest.raises(ConfigError, match="at least 16"):
        load_agent_config(_agent_toml(tmp_path, model, 1, 'admin_token = "secret"'))
    with pytest.raises(ConfigError, match="admin_token_file"):
        load_agent_config(_agent_toml(tmp_path, model, 1, f'admin_token_file = "{tmp_path / "nope"}"'))


def test_edgekit_serve_takes_the_token_from_the_environment(tmp_path: Path, model_dir: Path) -> None:
    model = model_dir / "cls_v1.onnx"
    sp = start_serve_logged([model], ["cls"], tmp_path / "a.err")
    try:
        r = httpx.post(sp.url + "/v2/repository/models/cls/unload", headers=ADMIN)
        assert r.status_code == 403 and "admin_token" in r.json()["error"]
    finally:
        sp.stop()
    sp = start_serve_logged(
        [model], ["cls"], tmp_path / "b.err", {"EDGEKIT_SERVER__ADMIN_TOKEN": ADMIN_TOKEN}
    )
    try:
        assert httpx.post(sp.url + "/v2/repository/models/cls/unload").status_code == 401
        assert httpx.post(sp.url + "/v2/repository/models/cls/unload", headers=ADMIN).status_code == 200
    finally:
        sp.stop()
