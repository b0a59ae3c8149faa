"""Two `edgekit fleet serve` processes on one PostgreSQL and one Mosquitto: the leader lease.

Both replicas serve the admin API; only the lease holder ticks, publishes the outbox and holds
the broker session that takes device reports (so each report is processed once, in order).
kill -9 of the leader mid-rollout: the other replica takes over within a lease period, and the
rollout completes with no device ever sent two different manifests for one sequence.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from fleet import admin_tokens
from fleet.db import open_database
from fleet.keys import KeyStore
from fleet.lease import Lease, LeaseKeeper, give_up
from fleet.server import open_state
from tests.fleet.conftest import FLEET
from tests.fleet.helpers import wait_for
from tests.support import mosquitto
from tests.support.convert_output import make_convert_output
from tests.support.devices import DevicePool
from tests.support.replicas import Replica, sequences

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed"),
]
LEASE = 3.0
N = 20
PW = "pw"


@pytest.fixture
def replicas(tmp_path: Path, pg_server: Any) -> Any:
    db = pg_server.create_database()
    state = tmp_path / "state"  # shared: keys and artifacts (a shared volume or S3 in production)
    users = {f"dev-{i:03d}": PW for i in range(N)}
    with mosquitto.Mosquitto(FLEET, users) as m:

        def replica(name: str) -> Replica:
            return Replica(name, tmp_path, state, db, FLEET, m.port, m.server_user, m.server_password, LEASE)

        a = replica("a").start()
        b: Replica | None = None
        try:
            # the first start creates the keys: let it finish before the second one reads them
            wait_for(
                lambda: (state / "admin.token").exists() and a.proc and a.proc.poll() is None, 60, "a up"
            )
            b = replica("b").start()
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
            print(a.log_tail(), b.log_tail() if b else "")


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


class Steps:
    """A LeaseKeeper's on_gain / on_lose, recorded."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def gain(self) -> None:
        self.events.append("gain")

    def lose(self) -> None:
        self.events.append("lose")


def test_give_up_after_a_third_of_the_lease_without_the_broker() -> None:
    assert not give_up(0.0, 3.0)
    assert not give_up(0.9, 3.0)  # a failover to the next broker node takes less
    assert give_up(1.0, 3.0)
    assert give_up(float("inf"), 3.0)  # no link at all


def test_a_leader_cut_off_from_the_broker_releases_and_the_other_takes_over(tmp_path: Path) -> None:
    db = open_database("", tmp_path)
    now = [100.0]
    down = {"a": 0.0}
    sa, sb = Steps(), Steps()
    a = LeaseKeeper(Lease(db, "a", 3.0, clock=lambda: now[0]), sa.gain, sa.lose, lambda: down["a"])
    b = LeaseKeeper(Lease(db, "b", 3.0, clock=lambda: now[0]), sb.gain, sb.lose)
    try:
        assert a.step() and not b.step()
        down["a"] = 0.5  # a broker failover in progress: no reason to step down
        assert a.step() and not b.step()
        down["a"] = 1.5
        assert not a.step()  # released at once, not left to expire
        assert sa.events == ["gain", "lose"]
        assert b.step() and sb.events == ["gain"]
        down["a"] = 0.0
        now[0] += 1.0
        assert not a.step()  # benched for a lease period, then a follower like any other
        now[0] += 3.0
        assert not a.step() and b.step()
    finally:
        db.close()
