"""What a hot swap leaves off the request path: the replaced runtime is freed on the retire
timer's thread, not by the request that happened to hold it last; start-up's objects are out of
the collector's way once the server runs."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from agent import fallback as fb
from agent import models as M
from agent.engine import Engine
from agent.server import ServerThread, build_app

pytestmark = pytest.mark.timeout(60)


def _wait(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_swapped_out_runtime_is_freed_by_the_retire_timer(model_dir: Path) -> None:
    reg = M.ModelRegistry()
    reg.put(M.load_model("cls", model_dir / "cls_v1.onnx", "1"))
    freed_on: list[str] = []
    old = reg.get("cls")
    assert old is not None
    weakref.finalize(old.runtime, lambda: freed_on.append(threading.current_thread().name))
    # A request that looked v1 up and answers after the swap: its reference goes first.
    in_flight = old
    del old
    t0 = time.monotonic()
    assert reg.put(M.load_model("cls", model_dir / "cls_v2.onnx", "2")) is in_flight
    assert [m.version for m in reg.all()] == ["2"]
    out = in_flight.run({"input": np.ones((1, 4), np.float32)})  # the old version still answers
    assert set(out) == {o.name for o in in_flight.outputs}
    del in_flight, out
    assert freed_on == []  # not freed by the request thread dropping it
    assert _wait(lambda: freed_on != [], M.RETIRE_S + 10)
    assert freed_on == ["edgekit-retire"]
    assert time.monotonic() - t0 >= M.RETIRE_S


def test_versions_the_policy_keeps_are_not_retired(model_dir: Path) -> None:
    from agent.versions import ALL

    reg = M.ModelRegistry()
    reg.set_policy("cls", ALL)
    reg.put(M.load_model("cls", model_dir / "cls_v1.onnx", "1"))
    v1 = weakref.ref(reg.get("cls", "1"))
    reg.put(M.load_model("cls", model_dir / "cls_v2.onnx", "2"))
    assert reg.versions("cls") == ["1", "2"] and reg.get("cls", "1") is v1()


def test_server_start_freezes_start_up_objects(model_dir: Path) -> None:
    reg = M.ModelRegistry()
    reg.put(M.load_model("cls", model_dir / "cls_v1.onnx", "1"))
    engine = Engine(reg, default_policy=fb.Policy(mode=fb.LOCAL_ONLY))
    gc.unfreeze()
    srv = ServerThread(build_app(engine)).start()
    try:
        assert gc.get_freeze_count() > 10_000  # the imports and the loaded model
    finally:
        srv.stop()
        engine.close()
