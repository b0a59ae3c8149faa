"""kill -9 right after a manifest's sequence became durable (issue 10).

The agent used to persist `last_sequence` (trust.json) and then, in a second write, the
`downloading` state. A power cut between the two lost the update for good: after the restart
the retained manifest was refused as a replay of itself. Now both are one atomic state write,
and a real agent process killed at exactly that point (EDGEKIT_FAULT, agent.faults) finishes
the update after its restart. Real Mosquitto, real HTTP artifact server, real subprocesses."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import httpx
import pytest

from agent.faults import ENV
from tests.agent.brokers import Fleet, Mosquitto
from tests.agent.conftest import free_port
from tests.agent.support import ArtifactServer, Keys, manifest
from tests.agent.test_crash import start_agent, wait_for, write_config
from tests.support.procs import stop_process

pytestmark = pytest.mark.timeout(120)


def test_kill9_after_sequence_persist_then_restart_completes_the_update(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(model_dir / "cls_v1.onnx", www / "cls_v1.onnx")
    http = ArtifactServer(www).start()
    port = free_port()
    broker = Mosquitto(tmp_path / "mosq", port).start()
    keys = Keys.make()
    agent_port = free_port()
    cfg = write_config(tmp_path, keys, port, agent_port)
    state_file = tmp_path / "data" / "state" / "cls.json"
    fleet = Fleet(port)
    monkeypatch.setenv(ENV, "after_sequence_persist")
    proc = start_agent(cfg, tmp_path / "agent.log")
    monkeypatch.delenv(ENV)
    try:
        fleet.wait(lambda ms: ms and ms[-1].get("online") is True, which="online")
        fleet.publish_desired(
            manifest(keys, file=www / "cls_v1.onnx", url=http.url + "cls_v1.onnx", sequence=1, version="1")
        )
        assert proc.wait(30) == -signal.SIGKILL  # died at the crash point, not before or after
        st = json.loads(state_file.read_text())
        assert (st["state"], st["sequence"]) == ("downloading", 1)
        assert http.requests == []  # killed before the download began

        proc = start_agent(cfg, tmp_path / "agent.log")  # no fault this time
        wait_for(
            lambda: json.loads(state_file.read_text())["state"] == "active",
            timeout=60,
            what="active after restart",
        )
        msgs = fleet.wait(lambda ms: any(m["state"] == "active" and m.get("version") == "1" for m in ms))
        assert not [m for m in msgs if m.get("refused") or m.get("reason") == "replay"]
        r = httpx.get(f"http://127.0.0.1:{agent_port}/v2/models/cls/ready", timeout=5)
        assert r.status_code == 200
    finally:
        stop_process(proc)
        fleet.stop()
        broker.stop()
        http.stop()
