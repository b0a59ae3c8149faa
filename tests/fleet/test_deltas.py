"""Delta updates from the fleet: a running FleetServer (embedded broker) computes deltas at
dispatch from the version devices report active, caches them content-addressed, and a real
agent Updater installs the release from the delta over the fleet's own HTTP artifact route."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.models import ModelRegistry
from agent.state import StateStore
from agent.store import ModelStore
from agent.updater import Updater
from edgekit.delta import ALGORITHM, apply_delta
from fleet import deltas
from fleet.server import FleetServer, open_state
from tests.fleet.conftest import FLEET, server_config
from tests.fleet.helpers import enroller, wait_for
from tests.support.convert_output import make_convert_output
from tests.support.devices import DevicePool
from tests.support.net import free_port

pytestmark = pytest.mark.timeout(120)
BALLAST = 1 << 18


def ballast_model(path: Path, scale: float, tuned: int, seed: int = 3) -> None:
    """y = softmax(x @ W * scale) + 0 * sum(ballast): 1 MiB of weights the outputs ignore, of
    which the last `tuned` floats are reseeded (a fine-tune of the last layer)."""
    w = (np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0) * scale
    ballast = np.random.default_rng(seed).standard_normal(BALLAST).astype(np.float32)
    if tuned:
        ballast[-tuned:] = np.random.default_rng(seed + 1).standard_normal(tuned)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["logits"]),
            helper.make_node("ReduceSum", ["BALLAST"], ["s"], keepdims=0),
            helper.make_node("Mul", ["s", "ZERO"], ["z"]),
            helper.make_node("Add", ["logits", "z"], ["l2"]),
            helper.make_node("Softmax", ["l2"], ["y"], axis=1),
        ],
        "ballast",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(ballast, "BALLAST"),
            numpy_helper.from_array(np.array(0.0, np.float32), "ZERO"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def conversion(dest: Path, scale: float, tuned: int, seed: int = 3) -> Path:
    """A convert output (tests.support.convert_output) whose ONNX artifact is a ballast model."""
    make_convert_output(dest, scale=scale)
    onnx_file = dest / "tiny.onnx"
    ballast_model(onnx_file, scale, tuned, seed)
    data = onnx_file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    report = json.loads((dest / "report.json").read_text())
    row = report["artifacts"][0]
    row["files"] = [{"path": onnx_file.name, "bytes": len(data), "sha256": digest}]
    row["sha256"], row["bytes"] = digest, len(data)
    (dest / "report.json").write_text(json.dumps(report))
    return dest


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[FleetServer, DevicePool]]:
    port = free_port()
    with FleetServer(server_config(tmp_path, port, embedded=True)) as srv:
        pool = DevicePool(FLEET, srv.keys.current_root(), "127.0.0.1", port, enroller(srv.state_dir))
        yield srv, pool
        pool.stop()


def agent(tmp_path: Path, srv: FleetServer, device: str) -> Updater:
    data = tmp_path / "agent"
    return Updater(
        store=ModelStore(data / "store"),
        states=StateStore(data / "state"),
        registry=ModelRegistry(),
        root=srv.keys.current_root(),
        fleet=FLEET,
        device=device,
        trust_file=data / "trust.json",
        formats=["onnx"],
        download_opts={"retries": 1, "timeout": 10},
    )


def test_rollout_ships_a_delta_the_agent_installs(fleet, tmp_path: Path) -> None:
    srv, pool = fleet
    srv.registry.publish(conversion(tmp_path / "v1", 1.0, 0), "tiny", "1.0")
    srv.registry.publish(conversion(tmp_path / "v2", 2.0, BALLAST // 8), "tiny", "2.0")
    dev = pool.add("dev-000", {"site": "berlin"})
    pool.connect_all()
    wait_for(lambda: len(srv.devices.list()) == 1, what="device registered")

    r1 = srv.engine.start("tiny", "1.0", {"site": "berlin"})
    wait_for(lambda: srv.engine.status(r1)["state"] == "completed", what="1.0 everywhere")
    v1_payload = dev.payloads[-1]
    assert "delta" not in json.loads(v1_payload)["signed"]["artifacts"]["onnx"]  # no device had a base

    r2 = srv.engine.start("tiny", "2.0", {"site": "berlin"})
    wait_for(lambda: srv.engine.status(r2)["state"] == "completed", what="2.0 everywhere")
    v2 = json.loads(dev.payloads[-1])["signed"]
    v1_onnx = json.loads(v1_payload)["signed"]["artifacts"]["onnx"]
    onnx_art = v2["artifacts"]["onnx"]
    (offer,) = onnx_art["delta"]
    assert offer["from_sha256"] == v1_onnx["sha256"] and offer["algorithm"] == ALGORITHM
    assert offer["size"] <= 0.3 * onnx_art["size"]  # the bar for a last-layer fine-tune

    # A real agent that ran 1.0 takes 2.0 from the delta, over the fleet's HTTP route.
    up = agent(tmp_path, srv, "dev-000")
    assert up.handle(v1_payload) == "active"
    reports: list[dict[str, Any]] = []
    up.report_fn = reports.append
    assert up.handle(dev.payloads[-1]) == "active"
    assert up.store.active("tiny").sha256 == onnx_art["sha256"]
    assert [r["delta"] for r in reports if r["state"] == "active"] == ["used"]
    x = np.ones((1, 4), np.float32)
    assert np.argmax(up.registry.get("tiny").run({"x": x})["y"]) == 2


def test_deltas_are_made_once_and_only_when_worth_it(tmp_path: Path) -> None:
    db, store, registry = open_state(tmp_path / "state")
    try:
        registry.publish(conversion(tmp_path / "v1", 1.0, 0), "tiny", "1.0")
        registry.publish(conversion(tmp_path / "v2", 1.0, BALLAST // 8), "tiny", "2.0")
        registry.publish(conversion(tmp_path / "v3", 1.0, 0, seed=11), "tiny", "3.0")  # all new weights
        with db.tx() as c:
            c.execute(
                "INSERT INTO devices (id, labels, active_model, active_version) VALUES"
                " ('a', '{}', 'tiny', '1.0'), ('b', '{}', 'tiny', '1.0'), ('c', '{}', 'tiny', '2.0')"
            )
        assert deltas.base_versions(db, "tiny", "3.0") == ["1.0", "2.0"]  # most devices first

        release = deltas.attach(registry, registry.version("tiny", "2.0"))
        onnx_art = next(a for a in release["artifacts"] if a.key == "onnx")
        v1 = next(a for a in registry.version("tiny", "1.0")["artifacts"] if a.key == "onnx")
        ((base, sha, _size, alg),) = onnx_art.deltas
        assert (base, alg) == (v1.sha256, ALGORITHM) and store.has(sha)
        # The cached bytes are a real delta: v1 + delta == v2, byte for byte.
        store.copy_out(base, tmp_path / "base")
        store.copy_out(sha, tmp_path / "delta")
        apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "out", onnx_art.size)
        assert hashlib.sha256((tmp_path / "out").read_bytes()).hexdigest() == onnx_art.sha256

        again = deltas.attach(registry, registry.version("tiny", "2.0"))
        assert next(a for a in again["artifacts"] if a.key == "onnx").deltas == onnx_art.deltas
        assert len(db.query("SELECT * FROM deltas WHERE target=?", (onnx_art.sha256,))) == 1

        # Fully retrained weights: the delta is no smaller than the file, so none is offered,
        # and that verdict is cached as well.
        v3 = deltas.attach(registry, registry.version("tiny", "3.0"))
        assert all(not a.deltas for a in v3["artifacts"] if a.key == "onnx")
        v3_onnx = next(a for a in v3["artifacts"] if a.key == "onnx")
        cached = deltas.DeltaCache(db, store).lookup(v1.sha256, v3_onnx.sha256)
        assert cached is None
    finally:
        db.close()
