"""Rollouts with 60 simulated devices (real MQTT clients verifying real signed manifests),
against the embedded broker and Mosquitto: waves advancing, abort + rollback, timeouts, pause."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fleet.helpers import fleet_pool, wait_for
from tests.support.convert_output import make_convert_output
from tests.support.devices import DevicePool, SimDevice

pytestmark = pytest.mark.timeout(120)
N = 60


def fails_on(version: str, every: int) -> Any:
    def behaviour(d: SimDevice, m: Any) -> str:
        return "fail" if m.version == version and int(d.id.split("-")[1]) % every == 0 else "ok"

    return behaviour


@pytest.fixture
def fleet(fleet_env: dict[str, Any], tmp) -> Iterator[tuple[Any, DevicePool]]:
    srv = fleet_env["server"]
    srv.registry.publish(make_convert_output(tmp / "v1", scale=1.0), "tiny", "1.0")
    srv.registry.publish(make_convert_output(tmp / "v2", scale=2.0), "tiny", "2.0")
    pool = fleet_pool(fleet_env)
    yield srv, pool
    pool.stop()


def silent_device(_d: SimDevice, _m: Any) -> str:
    return "silent"


def ok_device(_d: SimDevice, _m: Any) -> str:
    return "ok"


def add_devices(pool: DevicePool, behaviour: Any = None, n: int = N, silent: set[int] | None = None) -> None:
    for i in range(n):
        b = silent_device if silent and i in silent else (behaviour or ok_device)
        pool.add(f"dev-{i:03d}", {"site": "berlin" if i % 2 == 0 else "paris", "all": "yes"}, b)
    pool.connect_all()


def test_waves_advance_then_abort_rolls_back(fleet):
    srv, pool = fleet
    add_devices(pool, fails_on("2.0", every=5))  # 12 of 60 devices fail 2.0's smoke test
    wait_for(lambda: len(srv.devices.list()) == N, what="devices registered")

    # 1.0 everywhere, three waves; record which wave each device was in and when it got 1.0.
    rid = srv.engine.start("tiny", "1.0", {"all": "yes"}, [10, 50, 100], 0.95, 0.05, 20)
    wait_for(lambda: srv.engine.status(rid)["state"] == "completed", what="1.0 completed")
    st = srv.engine.status(rid)
    assert [w["devices"] for w in st["waves"]] == [6, 24, 30]
    assert [w["active"] for w in st["waves"]] == [6, 24, 30]
    waves = {
        r["device"]: r["wave"]
        for r in srv.db.query("SELECT device, wave FROM rollout_devices WHERE rollout=?", (rid,))
    }
    first_got = {d.id: d.statuses[1].ts for d in pool.devices.values()}  # "downloading" of 1.0
    for w in (1, 2):
        prev_last = max(first_got[d] for d, wv in waves.items() if wv == w - 1)
        this_first = min(first_got[d] for d, wv in waves.items() if wv == w)
        assert prev_last <= this_first, "a wave started before the previous one succeeded"
    assert all(d.version == "1.0" for d in pool.devices.values())

    # 2.0: failures push the failure rate past 5% -> abort -> rollback manifests to everyone who got 2.0.
    rid2 = srv.engine.start("tiny", "2.0", {"all": "yes"}, [10, 50, 100], 0.95, 0.05, 20)
    wait_for(lambda: srv.engine.status(rid2)["state"] == "aborted", what="2.0 aborted")
    st2 = srv.engine.status(rid2)
    assert "failure rate" in st2["reason"]
    got_v2 = {d.id for d in pool.devices.values() if any(m.version == "2.0" for m in d.manifests)}
    assert got_v2 and len(got_v2) < N, "abort happened before the last wave was dispatched"
    assert st2["totals"]["skipped"] == N - len(got_v2)

    def rolled_back() -> bool:
        return srv.engine.status(rid2)["totals"]["rolled_back"] == len(got_v2)

    wait_for(rolled_back, what="every updated device rolled back")
    for dev_id in got_v2:
        d = pool.devices[dev_id]
        last = d.manifests[-1]
        # The rollback is a NEW manifest (higher sequence, accepted by the verifier) for the old artifacts.
        assert last.version == "1.0" and last.sequence > d.manifests[-2].sequence
        assert last.artifacts["onnx"].sha256 == d.manifests[0].artifacts["onnx"].sha256
        assert d.version == "1.0"
    assert not any(d.refused for d in pool.devices.values())
    devs = {d["id"]: d for d in srv.devices.list()}
    assert all(devs[i]["active_version"] == "1.0" for i in got_v2)


def test_timeouts_end_rollouts(fleet):
    srv, pool = fleet
    add_devices(pool, silent={3, 17, 42})
    wait_for(lambda: len(srv.devices.list()) == N, what="devices registered")
    # 3/60 silent = 5% failures, tolerated at max 10%: completes once the silent ones time out.
    rid = srv.engine.start("tiny", "1.0", {}, [100], 0.9, 0.1, 1.5)
    wait_for(lambda: srv.engine.status(rid)["state"] != "running", what="rollout ended")
    st = srv.engine.status(rid)
    assert st["state"] == "completed", st
    assert st["totals"]["timed_out"] == 3 and st["totals"]["active"] == 57
    states = srv.engine.device_states(rid)
    assert {d for d, s in states.items() if s == "timed_out"} == {"dev-003", "dev-017", "dev-042"}


def test_all_silent_times_out_and_aborts(fleet):
    srv, pool = fleet
    add_devices(pool, n=50, silent=set(range(50)))
    wait_for(lambda: len(srv.devices.list()) == 50, what="devices registered")
    rid = srv.engine.start("tiny", "1.0", {"site": "berlin"}, [20, 100], 0.95, 0.05, 1.0)
    wait_for(lambda: srv.engine.status(rid)["state"] == "aborted", what="rollout aborted by timeouts")
    st = srv.engine.status(rid)
    assert st["totals"]["devices"] == 25
    assert st["waves"][0]["devices"] == 5 and st["waves"][1]["skipped"] == 20
    # They never had a version: nothing to roll back to, their retained desired state is cleared.
    assert st["totals"]["rolled_back"] == 5


def test_pause_resume_and_operator_abort(fleet):
    srv, pool = fleet
    add_devices(pool, n=50)
    wait_for(lambda: len(srv.devices.list()) == 50, what="devices registered")
    rid = srv.engine.start("tiny", "1.0", {}, [10, 100], 0.95, 0.05, 20)
    srv.engine.pause(rid)
    wait_for(lambda: srv.engine.status(rid)["waves"][0]["active"] == 5, what="wave 1 active")
    for _ in range(5):
        srv.engine.tick()
    st = srv.engine.status(rid)
    assert st["state"] == "paused" and st["waves"][1]["pending"] == 45
    srv.engine.resume(rid)
    wait_for(lambda: srv.engine.status(rid)["state"] == "completed", what="completed after resume")

    rid2 = srv.engine.start("tiny", "2.0", {}, [10, 100], 0.95, 0.05, 20)
    wait_for(lambda: srv.engine.status(rid2)["waves"][0]["active"] == 5, what="2.0 wave 1 active")
    srv.engine.abort(rid2)
    wait_for(lambda: srv.engine.status(rid2)["totals"]["rolled_back"] >= 5, what="operator abort rolled back")
    st2 = srv.engine.status(rid2)
    assert st2["state"] == "aborted" and st2["reason"] == "aborted by operator"
    wait_for(lambda: all(d.version == "1.0" for d in pool.devices.values()), what="all on 1.0")
