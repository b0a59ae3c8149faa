"""Health gates: the parser, the metrics and fleet.decide's gate rules as tables (injected clock,
no I/O), then rollouts of simulated devices whose heartbeats carry health reports: a version
twice as slow breaches a latency gate and is rolled back, a healthy one completes after its bake."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from edgekit.protocol import Health, ProtocolError, Status, VersionHealth
from fleet.decide import Abort, Advance, Complete, Counts, Pause, Rollout, StartBake, decide
from fleet.errors import FleetError
from fleet.gates import Gate, MemberHealth, fleet_baseline, metrics, parse_gate, parse_gates
from tests.fleet.helpers import fleet_pool, wait_for
from tests.support.convert_output import make_convert_output
from tests.support.devices import DevicePool, SimDevice

NOW = 1_000_000.0
LAT = parse_gate("latency_p95_ratio<=1.2")
ERR = parse_gate("error_rate<=0.01")


# ---- parser ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, gate",
    [
        ("latency_p95_ratio<=1.2", Gate("latency_p95_ratio", "<=", 1.2)),
        (" fallback_rate < 0.05 ", Gate("fallback_rate", "<", 0.05)),
        ("error_rate>=0", Gate("error_rate", ">=", 0.0)),
        ("smoke_failure_rate>.5", Gate("smoke_failure_rate", ">", 0.5)),
        ("error_rate<=1e-3", Gate("error_rate", "<=", 0.001)),
    ],
)
def test_parse_gate(text: str, gate: Gate) -> None:
    assert parse_gate(text) == gate
    assert parse_gate(str(gate)) == gate  # the stored form parses back to the same gate


@pytest.mark.parametrize(
    "text, words",
    [
        ("latency<=1.2", "unknown gate metric 'latency'"),
        ("error_rate=0.1", "invalid gate"),
        ("error_rate<=", "invalid gate"),
        ("error_rate<=-1", "invalid gate"),
        ("error_rate<=nan", "invalid gate"),
        ("error_rate<=0.1; drop table", "invalid gate"),
        ("", "invalid gate"),
    ],
)
def test_parse_gate_refuses_in_one_line(text: str, words: str) -> None:
    with pytest.raises(FleetError) as e:
        parse_gate(text)
    assert words in e.value.args[0] and "\n" not in e.value.args[0]


def test_too_many_gates() -> None:
    with pytest.raises(FleetError, match="at most 16"):
        parse_gates(["error_rate<=0.1"] * 17)


def test_unknown_value_never_breaches() -> None:
    assert LAT.holds(None) and LAT.holds(1.2) and not LAT.holds(1.21)


# ---- metrics -----------------------------------------------------------------------------------
def member(**kw: Any) -> MemberHealth:
    base = MemberHealth(wave=0, state="active", reason=None, prev_version="1.0")
    return dataclasses.replace(base, **kw)


def test_metrics_from_member_reports() -> None:
    members = [
        member(requests=100, errors=1, fallbacks=4, p95_ms=20.0, prev_p95_ms=10.0),  # own baseline: 2.0
        member(requests=100, errors=0, fallbacks=0, p95_ms=11.0, prev_p95_ms=10.0),  # 1.1
        member(requests=0, p95_ms=None),  # no traffic yet: counts for nothing but smoke
        member(p95_ms=30.0),  # no own baseline: the fleet median of 1.0 (12.0) -> 2.5
        member(state="failed", reason="smoke_test"),  # never ran it: no report
        member(state="downloading"),
    ]
    m = metrics(members, fleet_baseline([("1.0", 10.0), ("1.0", 12.0), ("1.0", 14.0), ("0.9", 1.0)]))
    assert m["latency_p95_ratio"] == pytest.approx(2.0)  # median of 2.0, 1.1, 2.5
    assert m["error_rate"] == pytest.approx(1 / 200)
    assert m["fallback_rate"] == pytest.approx(4 / 200)
    assert m["smoke_failure_rate"] == pytest.approx(1 / 6)


def test_a_baseline_reported_during_the_update_yields_to_the_devices_still_on_the_old_version() -> None:
    # Measured in a loaded run: the device's last 1.0 report, made while it downloaded and loaded
    # 2.0, said 15.5 ms (0.8 ms before), which hid a 25x slower release behind a 1.25 ratio.
    late = member(p95_ms=19.3, prev_p95_ms=15.5, prev_after_send=True)
    assert metrics([late], fleet_baseline([("1.0", 0.8)]))["latency_p95_ratio"] == pytest.approx(19.3 / 0.8)
    # nobody left on 1.0: its own report is still better than no baseline
    assert metrics([late], {})["latency_p95_ratio"] == pytest.approx(19.3 / 15.5)
    early = member(p95_ms=19.3, prev_p95_ms=0.9)  # made before the manifest was sent: its own wins
    assert metrics([early], fleet_baseline([("1.0", 0.8)]))["latency_p95_ratio"] == pytest.approx(19.3 / 0.9)


def test_metrics_without_data_are_unknown() -> None:
    m = metrics([member(state="sent")], {})
    assert m["latency_p95_ratio"] is None and m["error_rate"] is None and m["fallback_rate"] is None
    assert m["smoke_failure_rate"] == 0
    assert metrics([], {})["smoke_failure_rate"] is None
    # no previous p95 anywhere: no ratio
    assert (
        metrics([member(requests=5, p95_ms=9.0, prev_version="0.1")], {"1.0": 3.0})["latency_p95_ratio"]
        is None
    )


# ---- decide with gates -------------------------------------------------------------------------
def rollout(**kw: Any) -> Rollout:
    base = Rollout(
        id="r-1",
        state="running",
        wave=0,
        waves=(25.0, 100.0),
        success_threshold=0.9,
        max_failure_rate=0.1,
        gates=(LAT, ERR),
        bake=60.0,
    )
    return dataclasses.replace(base, **kw)


ALL_ACTIVE = Counts(dispatched=10, active=10)
SLOW = {"latency_p95_ratio": 2.0, "error_rate": 0.0}
FINE = {"latency_p95_ratio": 1.05, "error_rate": 0.0}
UNKNOWN: dict[str, float | None] = {"latency_p95_ratio": None, "error_rate": None}

CASES = [
    ("wave met its rule: bake starts", rollout(), ALL_ACTIVE, FINE, StartBake()),
    ("a bake time alone also bakes", rollout(gates=()), ALL_ACTIVE, None, StartBake()),
    ("no gates, no bake: as before", rollout(gates=(), bake=0.0), ALL_ACTIVE, None, Advance()),
    ("baking", rollout(bake_started=NOW - 59), ALL_ACTIVE, FINE, None),
    ("baked: next wave", rollout(bake_started=NOW - 60), ALL_ACTIVE, FINE, Advance()),
    ("baked without data: next wave", rollout(bake_started=NOW - 60), ALL_ACTIVE, UNKNOWN, Advance()),
    (
        "last wave baked: complete",
        rollout(wave=1, bake_started=NOW - 61),
        Counts(dispatched=40, active=40),
        FINE,
        Complete("40/40 active"),
    ),
    (
        "last wave with stragglers: no bake yet",
        rollout(wave=1),
        Counts(dispatched=40, active=38, waiting=2),
        FINE,
        None,
    ),
    (
        "breach during the bake aborts",
        rollout(bake_started=NOW - 5),
        ALL_ACTIVE,
        SLOW,
        Abort("gate latency_p95_ratio<=1.2 breached: latency_p95_ratio=2"),
    ),
    (
        "breach before the wave finished installing",
        rollout(),
        Counts(dispatched=10, active=3, waiting=7),
        {"latency_p95_ratio": 1.0, "error_rate": 0.2},
        Abort("gate error_rate<=0.01 breached: error_rate=0.2"),
    ),
    (
        "on_breach=pause pauses",
        rollout(on_breach="pause", bake_started=NOW - 5),
        ALL_ACTIVE,
        SLOW,
        Pause("gate latency_p95_ratio<=1.2 breached: latency_p95_ratio=2"),
    ),
    (
        "paused: gates wait for the operator",
        rollout(state="paused", paused_at=NOW - 1),
        ALL_ACTIVE,
        SLOW,
        None,
    ),
    (
        "failure rate still comes first",
        rollout(),
        Counts(dispatched=10, active=5, failed=5),
        SLOW,
        Abort("failure rate 5/10 above 10%"),
    ),
]


@pytest.mark.parametrize("name, r, counts, health, expected", CASES, ids=[c[0] for c in CASES])
def test_decide_with_gates(name: str, r: Rollout, counts: Counts, health: Any, expected: Any) -> None:
    assert decide(r, counts, NOW, health) == expected


# ---- protocol ----------------------------------------------------------------------------------
def test_status_health_round_trip_and_bounds() -> None:
    h = Health(window_s=5.0, models=[VersionHealth("tiny", "1.0", 10, 1, 2, 4.5)])
    s = Status(device="dev-1", state="active", model="tiny", version="1.0", health=h)
    assert Status.from_json(s.to_json()).health == h
    assert b"health" not in Status(device="dev-1", state="idle").to_json()
    with pytest.raises(ProtocolError, match="invalid_status"):
        Status.from_json(
            b'{"device":"d","state":"idle","health":{"window_s":5,"models":'
            + b"["
            + b",".join([b'{"model":"m","version":"v"}'] * 33)
            + b"]}}"
        )


# ---- end to end: simulated devices over a real broker ------------------------------------------
N = 20
P95 = {"1.0": 10.0, "2.0": 20.0, "3.0": 10.5}  # 2.0 is twice as slow as 1.0


def report(d: SimDevice) -> Health | None:
    if d.version is None:
        return None
    return Health(window_s=0.2, models=[VersionHealth("tiny", d.version, 100, 0, 1, P95[d.version])])


@pytest.fixture
def fleet(fleet_env: dict[str, Any], tmp) -> Iterator[tuple[Any, DevicePool]]:
    srv = fleet_env["server"]
    for i, v in enumerate(P95):
        srv.registry.publish(make_convert_output(tmp / v, scale=1.0 + i), "tiny", v)
    pool = fleet_pool(fleet_env, heartbeat_s=0.2, health=report)
    for i in range(N):
        pool.add(f"dev-{i:03d}", {"all": "yes"})
    pool.connect_all()
    wait_for(lambda: len(srv.devices.list()) == N, what="devices registered")
    yield srv, pool
    pool.stop()


def reported(srv: Any, version: str) -> int:
    rows = srv.db.query("SELECT COUNT(*) FROM device_health WHERE version=?", (version,))
    return int(rows[0][0])


@pytest.mark.timeout(120)
def test_latency_gate_aborts_slow_version_and_healthy_one_completes_after_bake(fleet) -> None:
    srv, pool = fleet
    gates = ["latency_p95_ratio<=1.2", "error_rate<=0.01", "fallback_rate<=0.05"]
    rid = srv.engine.start("tiny", "1.0", {"all": "yes"}, [100], 0.95, 0.05, 20)
    wait_for(lambda: srv.engine.status(rid)["state"] == "completed", what="1.0 completed")
    wait_for(lambda: reported(srv, "1.0") == N, what="1.0 health reported by every device")

    # 2.0 is twice as slow: the first wave breaches the latency gate, aborts and rolls back.
    rid2 = srv.engine.start("tiny", "2.0", {"all": "yes"}, [25, 100], 0.95, 0.05, 20, gates=gates, bake=1.0)
    wait_for(lambda: srv.engine.status(rid2)["state"] == "aborted", what="2.0 aborted by its gate")
    st = srv.engine.status(rid2)
    assert st["reason"].startswith("gate latency_p95_ratio<=1.2 breached"), st["reason"]
    assert st["waves"][0]["gates"]["latency_p95_ratio"] == pytest.approx(2.0)
    assert st["waves"][1]["skipped"] == N - st["waves"][0]["devices"]
    wait_for(
        lambda: srv.engine.status(rid2)["totals"]["rolled_back"] == st["waves"][0]["devices"],
        what="wave 1 rolled back",
    )
    wait_for(lambda: all(d.version == "1.0" for d in pool.devices.values()), what="every device on 1.0")

    # 3.0 is within 1.2x: both waves bake, then it completes.
    rid3 = srv.engine.start("tiny", "3.0", {"all": "yes"}, [25, 100], 0.95, 0.05, 20, gates=gates, bake=1.0)
    wait_for(lambda: srv.engine.status(rid3)["state"] != "running", what="3.0 ended")
    st3 = srv.engine.status(rid3)
    assert st3["state"] == "completed", st3
    assert st3["gates"] == gates and st3["bake"] == 1.0
    for w in st3["waves"]:
        assert w["gates"]["latency_p95_ratio"] == pytest.approx(1.05)
        assert w["gates"]["error_rate"] == 0 and w["gates"]["fallback_rate"] == pytest.approx(0.01)
    # each wave baked: the last wave's devices were active at least `bake` before the end
    last_active = srv.db.query(
        "SELECT MAX(updated) FROM rollout_devices WHERE rollout=? AND wave=1", (rid3,)
    )[0][0]
    assert st3["ended"] - last_active >= 1.0
    assert all(d.version == "3.0" for d in pool.devices.values())


@pytest.mark.timeout(120)
def test_gate_breach_can_pause_instead(fleet) -> None:
    srv, _pool = fleet
    rid = srv.engine.start("tiny", "1.0", {}, [100], 0.95, 0.05, 20)
    wait_for(lambda: srv.engine.status(rid)["state"] == "completed", what="1.0 completed")
    wait_for(lambda: reported(srv, "1.0") == N, what="1.0 health reported")
    rid2 = srv.engine.start(
        "tiny",
        "2.0",
        {},
        [25, 100],
        0.95,
        0.05,
        20,
        gates=["latency_p95_ratio<=1.5"],
        bake=1.0,
        on_breach="pause",
    )
    wait_for(lambda: srv.engine.status(rid2)["state"] == "paused", what="2.0 paused by its gate")
    st = srv.engine.status(rid2)
    assert "latency_p95_ratio<=1.5 breached" in st["reason"]
    assert st["waves"][1]["pending"] == N - st["waves"][0]["devices"]  # nothing more dispatched
    assert st["totals"]["rolled_back"] == 0
