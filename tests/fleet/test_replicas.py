"""Two `edgekit fleet serve` processes on one PostgreSQL and one Mosquitto: the leader lease.

Both replicas serve the admin API; only the lease holder ticks, publishes the outbox and holds
the broker session that takes device reports (so each report is processed once, in order).
kill -9 of the leader mid-rollout: the other replica takes over within a lease period, and the
rollout completes with no device ever sent two different manifests for one sequence.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet import admin_tokens
from fleet.keys import KeyStore
from fleet.server import open_state
from tests.fleet.conftest import FLEET
from tests.fleet.helpers import wait_for
from tests.support import mosquitto
from tests.support.convert_output import make_convert_output
from tests.support.devices import DevicePool
from tests.support.net import free_ports
from tests.support.procs import stop_process

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed"),
]
REPO = Path(__file__).resolve().parents[2]
LEASE = 3.0
N = 20
PW = "pw"


def sequences(payloads: list[bytes]) -> dict[int, set[bytes]]:
    out: dict[int, set[bytes]] = defaultdict(set)
    for p in payloads:
        if p:
            out[json.loads(p)["signed"]["sequence"]].add(p)
    return out


class Replica:
    def __init__(self, name: str, tmp: Path, state: Path, db: str, m: mosquitto.Mosquitto):
        http_port, self.admin_port = free_ports(2)
        self.name = name
        self.config = tmp / f"{name}.toml"
        self.config.write_text(
            f'[server]\nfleet = "{FLEET}"\nstate_dir = "{state}"\ndb = "{db}"\n'
            f'replica_id = "{name}"\nlease_seconds = {LEASE}\ntick_seconds = 0.1\n'
            f'[broker]\nembedded = false\nhost = "127.0.0.1"\nport = {m.port}\n'
            f'username = "{m.server_user}"\npassword = "{m.server_password}"\n'
            f"[http]\nport = {http_port}\n[admin]\nport = {self.admin_port}\n"
        )
        self.log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Replica:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgekit", "fleet", "serve", "--config", str(self.config)],
            cwd=REPO,
            stdout=self.log,
            stderr=self.log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return self

    def api(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.admin_port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def health(self, token: str) -> dict[str, Any] | None:
        try:
            with self.api(token) as c:
                r = c.get("/api/health")
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        self.log.close()


@pytest.fixture
def replicas(tmp_path: Path, pg_server: Any) -> Any:
    db = pg_server.create_database()
    state = tmp_path / "state"  # shared: keys and artifacts (a shared volume or S3 in production)
    users = {f"dev-{i:03d}": PW for i in range(N)}
    with mosquitto.Mosquitto(FLEET, users) as m:
        a = Replica("a", tmp_path, state, db, m).start()
        b: Replica | None = None
        try:
            # the first start creates the keys: let it finish before the second one reads them
            wait_for(
                lambda: (state / "admin.token").exists() and a.proc and a.proc.poll() is None, 60, "a up"
            )
            b = Replica("b", tmp_path, state, db, m).start()
            # any replica accepts any token of the database: this one was made by neither
            database, _store, registry = open_state(state, None, db)
            token = admin_tokens.issue(database, "test")
            registry.publish(make_convert_output(tmp_path / "v1"), "tiny", "1.0")
            wait_for(lambda: b.health(token) is not None, 60, "b up")
            yield a, b, token, m, state
        finally:
            for r in (b, a):
                if r:
                    r.stop()
            print((tmp_path / "a.log").read_text()[-3000:], (tmp_path / "b.log").read_text()[-3000:])


def test_leader_killed_mid_rollout_the_other_replica_completes_it(replicas):
    a, b, token, m, state = replicas
    ha, hb = a.health(token), b.health(token)
    assert ha and hb and ha["leader"] and not hb["leader"], (ha, hb)
    with a.api("not-a-token") as c:
        assert c.get("/api/health").status_code == 401

    pool = DevicePool(
        FLEET, KeyStore(state).current_root(), "127.0.0.1", m.port, lambda _d: PW, report_delay=0.3
    )
    try:
        for i in range(N):
            pool.add(f"dev-{i:03d}", {"site": "berlin"})
        pool.connect_all()
        with b.api(token) as c:
            wait_for(lambda: len(c.get("/api/devices").json()) == N, 60, "devices registered (read on b)")
            # the follower takes the operator's request; the leader publishes what it queued
            r = c.post(
                "/api/rollouts",
                json={"model": "tiny", "version": "1.0", "waves": [10, 50, 100], "success_threshold": 1.0,
                      "device_timeout": 120},
            )  # fmt: skip
            assert r.status_code == 200, r.text
            rid = r.json()["id"]
            wait_for(
                lambda: c.get(f"/api/rollouts/{rid}").json()["totals"]["active"] >= 2, 60, "wave 1 active"
            )
        hb = b.health(token)
        assert hb and hb["messages_in"] == 0 and hb["outbox_published"] == 0  # the follower ingests nothing
        ha = a.health(token)
        assert ha and ha["messages_in"] >= N and ha["outbox_published"] >= 2

        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGKILL)  # mid-rollout: waves 2 and 3 are not done yet
        a.proc.wait(10)
        wait_for(lambda: (b.health(token) or {}).get("leader") is True, 2 * LEASE, "b took over")

        with b.api(token) as c:
            wait_for(
                lambda: c.get(f"/api/rollouts/{rid}").json()["state"] == "completed", 120, "completed on b"
            )
            assert c.get(f"/api/rollouts/{rid}").json()["totals"]["active"] == N
        assert all(d.version == "1.0" for d in pool.devices.values())
        for d in pool.devices.values():
            assert not d.refused, (d.id, d.refused)
            assert all(len(p) == 1 for p in sequences(d.payloads).values()), d.id  # one manifest per sequence
        hb = b.health(token)
        assert hb and hb["messages_in"] > 0 and hb["outbox_published"] > 0
    finally:
        pool.stop()
