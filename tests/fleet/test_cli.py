"""The `edgekit fleet` commands against a real `edgekit fleet serve` process (embedded broker)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgekit.trust import load_trusted_root, update_root_chain
from tests.support.convert_output import make_convert_output
from tests.support.devices import DevicePool
from tests.support.net import free_ports, wait_port

pytestmark = pytest.mark.timeout(90)


def edgekit(*args: str, cfg: Path, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgekit.cli", *args, "--config", str(cfg)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def write_config(tmp: Path) -> tuple[Path, dict[str, int]]:
    ports = dict(zip(("mqtt", "http", "admin"), free_ports(3), strict=True))
    cfg = tmp / "fleet.toml"
    cfg.write_text(
        f'[server]\nfleet = "cli"\nstate_dir = "{tmp / "state"}"\ntick_seconds = 0.1\n'
        f"[broker]\nport = {ports['mqtt']}\n"
        f"[http]\nport = {ports['http']}\n[admin]\nport = {ports['admin']}\n"
    )
    return cfg, ports


def test_keys_init_and_rotate(tmp_path: Path):
    cfg, _ = write_config(tmp_path)
    out = json.loads(edgekit("fleet", "keys", "init", "--json", cfg=cfg).stdout)
    assert out["version"] == 1
    state = tmp_path / "state"
    for name in ("root.pem", "release.pem"):
        assert stat.S_IMODE(os.stat(state / "keys" / name).st_mode) == 0o600
    v1 = load_trusted_root((state / "root.json").read_bytes())
    again = edgekit("fleet", "keys", "init", cfg=cfg, check=False)
    assert again.returncode != 0 and "already exist" in again.stderr and "Traceback" not in again.stderr
    out = json.loads(edgekit("fleet", "keys", "rotate", "--json", cfg=cfg).stdout)
    assert out["version"] == 2 and out["server_reloaded"] is False
    edgekit("fleet", "keys", "rotate", "--new-root-key", cfg=cfg)
    chain = [p.read_bytes() for p in sorted((state / "roots").glob("*.root.json"))]
    assert update_root_chain(v1, chain).version == 3  # an agent enrolled with v1 follows both rotations


def test_serve_publish_rollout_devices(tmp_path: Path):
    cfg, ports = write_config(tmp_path)
    out = make_convert_output(tmp_path / "convert-out")
    pub = json.loads(
        edgekit("fleet", "publish", str(out), "--model", "tiny", "--version", "1.0", "--json", cfg=cfg).stdout
    )
    assert {a["key"] for a in pub["artifacts"]} == {"onnx", "tfjs"} and pub["smoke_test"] is True
    dup = edgekit("fleet", "publish", str(out), "--model", "tiny", "--version", "1.0", cfg=cfg, check=False)
    assert dup.returncode != 0 and "already published" in dup.stderr

    # No server yet: a clear one-line error with a hint.
    down = edgekit("fleet", "devices", cfg=cfg, check=False)
    assert down.returncode != 0 and "edgekit fleet serve" in down.stderr and "Traceback" not in down.stderr

    env = dict(os.environ, EDGEKIT_LOG_LEVEL="WARNING")
    srv = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli", "fleet", "serve", "--config", str(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pool = None
    try:
        wait_port(ports["admin"], timeout=20)
        root = load_trusted_root((tmp_path / "state" / "root.json").read_bytes())
        # The embedded broker admits enrolled devices only: each gets its bundle from the CLI.
        passwords = {}
        for i in range(6):
            out = tmp_path / f"d{i}-bundle"
            info = json.loads(
                edgekit("fleet", "devices", "enroll", f"d{i}", "--out", str(out), "--json", cfg=cfg).stdout
            )
            assert info["device"] == f"d{i}" and info["broker_url"] == f"mqtt://127.0.0.1:{ports['mqtt']}"
            passwords[f"d{i}"] = (out / "mqtt.password").read_text().strip()
        pool = DevicePool("cli", root, "127.0.0.1", ports["mqtt"], passwords.__getitem__)
        for i in range(6):
            pool.add(f"d{i}", {"site": "x"})
        pool.connect_all()
        deadline = time.monotonic() + 15
        while len(json.loads(edgekit("fleet", "devices", "--json", cfg=cfg).stdout)) < 6:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        st = json.loads(
            edgekit(
                "fleet",
                "rollout",
                "start",
                "tiny",
                "1.0",
                "--selector",
                "site=x",
                "--waves",
                "50,100",
                "--device-timeout",
                "20s",
                "--json",
                cfg=cfg,
            ).stdout
        )
        rid = st["id"]
        deadline = time.monotonic() + 20
        while st["state"] != "completed":
            assert time.monotonic() < deadline, st
            time.sleep(0.2)
            st = json.loads(edgekit("fleet", "rollout", "status", rid, "--json", cfg=cfg).stdout)
        assert st["totals"]["active"] == 6 and [w["devices"] for w in st["waves"]] == [3, 3]
        # The server's own JSON carries ISO 8601 beside the epoch seconds (not only the CLI's).
        token = (tmp_path / "state" / "admin.token").read_text().strip()
        raw = httpx.get(
            f"http://127.0.0.1:{ports['admin']}/api/rollouts/{rid}",
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        assert isinstance(raw["created"], float) and isinstance(raw["ended"], float)
        assert raw["created_iso"] <= raw["ended_iso"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", raw["ended_iso"])
        human = edgekit("fleet", "rollout", "status", rid, cfg=cfg).stdout
        assert "completed" in human
        assert rid in edgekit("fleet", "rollout", "list", cfg=cfg).stdout
        devs = json.loads(edgekit("fleet", "devices", "--json", cfg=cfg).stdout)
        assert {d["active_version"] for d in devs} == {"1.0"} and all(d["online"] for d in devs)
        ended = edgekit("fleet", "rollout", "abort", rid, cfg=cfg, check=False)
        assert ended.returncode != 0 and "already ended" in ended.stderr
        # Rotation while serving: the server reloads its release key; devices follow the chain.
        assert json.loads(edgekit("fleet", "keys", "rotate", "--json", cfg=cfg).stdout)["server_reloaded"]
    finally:
        if pool:
            pool.stop()
        srv.terminate()
        try:
            srv.wait(timeout=15)
        except subprocess.TimeoutExpired:
            srv.kill()
    assert srv.returncode == 0, srv.stdout.read() if srv.stdout else ""
