"""Hot swap under concurrent load: zero failed requests while versions change underneath."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent import fallback as fb
from agent.engine import Engine
from agent.models import ModelRegistry, load_model
from agent.server import ServerThread, build_app
from agent.state import StateStore
from agent.store import ModelStore
from agent.updater import Updater
from edgekit.trust import load_trusted_root
from tests.agent.support import ArtifactServer, Keys, manifest

pytestmark = pytest.mark.timeout(90)


def test_hot_swap_under_load_drops_nothing(tmp_path: Path, model_dir: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    for n in ("cls_v1.onnx", "cls_v2.onnx"):
        shutil.copy(model_dir / n, www / n)
    http = ArtifactServer(www).start()
    keys = Keys.make()
    reg = ModelRegistry()
    updater = Updater(
        store=ModelStore(tmp_path / "store"),
        states=StateStore(tmp_path / "state"),
        registry=reg,
        root=load_trusted_root(keys.root_bytes()),
        fleet="f",
        device="dev-1",
        trust_file=tmp_path / "trust.json",
    )
    engine = Engine(reg, default_policy=fb.Policy(mode=fb.LOCAL_ONLY))
    srv = ServerThread(build_app(engine)).start()

    def publish(seq: int, file: str, version: str, bias: float) -> str:
        return updater.handle(
            manifest(
                keys, file=www / file, url=http.url + file, sequence=seq, version=version, smoke_bias=bias
            )
        )

    assert publish(1, "cls_v1.onnx", "1", 0.0) == "active"
    stop = threading.Event()
    results: list[tuple[int, str]] = []
    errors: list[str] = []
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [2.0, 1.0, 0.0, 0.0]}]}

    def client() -> None:
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v2/models/cls/infer", json=doc)
                    results.append((r.status_code, r.json().get("model_version", "")))
                    if r.status_code != 200:
                        errors.append(r.text)
                except Exception as e:  # a dropped connection counts as a failed request
                    errors.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        seq = 2
        for i in range(3):  # real signed updates through the whole pipeline, while under load
            v, f, b = ("2", "cls_v2.onnx", 0.5) if i % 2 == 0 else ("1", "cls_v1.onnx", 0.0)
            assert publish(seq, f, f"{v}.{seq}", b) == "active"
            seq += 1
        for i in range(30):  # and raw reference swaps as fast as models load
            reg.put(load_model("cls", model_dir / ("cls_v2.onnx" if i % 2 else "cls_v1.onnx"), f"raw{i}"))
    finally:
        stop.set()
        for t in threads:
            t.join(20)
        srv.stop()
        http.stop()
        engine.close()
    assert errors == []
    assert len(results) > 50
    versions = {v for _, v in results}
    assert {"1", "2.2", "1.3", "2.4"} & versions and any(v.startswith("raw") for v in versions)


def test_inflight_request_keeps_its_model(model_dir: Path) -> None:
    """The object a request looked up stays usable after the registry moved on."""
    reg = ModelRegistry()
    reg.put(load_model("cls", model_dir / "cls_v1.onnx", "1"))
    held = reg.get("cls")
    reg.put(load_model("cls", model_dir / "cls_v2.onnx", "2"))
    x = np.array([[2.0, 1.0, 0.0, 0.0]], np.float32)
    assert held.run({"input": x})["probs"].shape == (1, 3)
    assert reg.get("cls").version == "2"
