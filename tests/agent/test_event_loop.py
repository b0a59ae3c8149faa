"""The OIP server's event loop: asyncio, whatever else is installed (uvloop did not win clearly
in bench/agent.py --ab default,uvloop), and the configured one for ServerThread (the daemon,
tests) as for `edgekit serve`."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from agent import fallback as fb
from agent import server
from agent.engine import Engine
from agent.models import ModelRegistry, load_model
from agent.server import ServerThread, build_app

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_server_thread_runs_the_configured_loop(
    model_dir: Path, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    monkeypatch.setattr(server, "EVENT_LOOP", loop)
    reg = ModelRegistry()
    reg.put(load_model("cls", model_dir / "cls_v1.onnx", "1"))
    engine = Engine(reg, default_policy=fb.Policy(mode=fb.LOCAL_ONLY))
    st = ServerThread(build_app(engine)).start()
    try:
        listener = st.server.servers[0]  # an asyncio.Server, or uvloop's own
        assert type(listener).__module__.split(".")[0] == loop
        doc = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        assert httpx.post(f"{st.url}/v2/models/cls/infer", json=doc, timeout=10).status_code == 200
    finally:
        st.stop()
        engine.close()


def test_the_default_loop_does_not_follow_what_is_installed() -> None:
    assert server.event_loop() == "asyncio"
    assert server.uvicorn_config(build_app).loop == "asyncio"
