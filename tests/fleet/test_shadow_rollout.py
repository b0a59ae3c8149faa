"""Shadow canary rollouts end to end: a fleet server, a real Mosquitto, and simulated devices
(tests/support/devices.py) that verify every manifest, install a shadow manifest beside their
active version, report its agreement in their heartbeats and activate the held blob when
promoted. A good shadow is promoted on every device and completes; a worse one aborts and is
never activated anywhere; too few compared requests hold until there are enough."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from edgekit.protocol import ShadowStats
from fleet.cli import rollout_table
from fleet.client import AdminClient
from tests.fleet.conftest import FLEET
from tests.fleet.helpers import fleet_pool, wait_for
from tests.support.convert_output import make_convert_output
from tests.support.devices import DevicePool, SimDevice

pytestmark = pytest.mark.timeout(180)

N = 12
WAVES = [25.0, 100.0]  # 3 devices, then the other 9
RULE = ["top1_agreement>=0.98", "latency_ratio<=1.5"]
T = 60.0


@pytest.fixture
def broker_kind() -> str:
    return "mosquitto"  # the real broker (fleet_env skips when it is not installed)


class Comparison:
    """What every simulated device reports about its shadow; tests change it as they go."""

    def __init__(self) -> None:
        self.requests, self.agreement = 300, 0.995

    def __call__(self, d: SimDevice) -> ShadowStats | None:
        m = d.shadow
        assert m is not None
        return ShadowStats(
            model=m.model,
            version=m.version,
            requests=self.requests,
            top1_agreement=self.agreement,
            cosine_mean=0.999,
            max_abs=0.02,
            latency_ratio=1.05,
        )


@pytest.fixture
def fleet(fleet_env: dict[str, Any], tmp) -> Iterator[tuple[Any, DevicePool, Comparison]]:
    srv = fleet_env["server"]
    for i, v in enumerate(("1.0", "2.0")):
        srv.registry.publish(make_convert_output(tmp / v, scale=1.0 + i), "tiny", v)
    comparison = Comparison()
    pool = fleet_pool(fleet_env, heartbeat_s=0.2, shadow_stats=comparison)
    for i in range(N):
        pool.add(f"dev-{i:03d}", {"all": "yes"})
    pool.connect_all()
    wait_for(lambda: len(srv.devices.list()) == N, T, "devices registered")
    rid = srv.engine.start("tiny", "1.0", {"all": "yes"}, [100], 0.95, 0.05, 30)
    wait_for(lambda: srv.engine.status(rid)["state"] == "completed", T, "1.0 everywhere")
    yield srv, pool, comparison
    pool.stop()


def start_shadow(srv: Any, min_requests: int = 200) -> str:
    return srv.engine.start(
        "tiny",
        "2.0",
        {"all": "yes"},
        WAVES,
        0.95,
        0.05,
        30,
        shadow=True,
        promote=RULE,
        min_shadow_requests=min_requests,
    )


def activated(pool: DevicePool, version: str) -> list[str]:
    """Devices that were ever sent an active-mode manifest of `version`."""
    return [
        d.id
        for d in pool.devices.values()
        if any(m.version == version and m.mode == "active" for m in d.manifests)
    ]


def shadows(pool: DevicePool, version: str) -> list[str]:
    return [
        d.id
        for d in pool.devices.values()
        if any(m.version == version and m.mode == "shadow" for m in d.manifests)
    ]


def recorded(srv: Any, rid: str, requests: int) -> int:
    """Members of `rid` whose stored shadow stats say `requests`."""
    rows = srv.db.query(
        "SELECT COUNT(*) FROM rollout_devices WHERE rollout=? AND shadow_requests=?", (rid, requests)
    )
    return int(rows[0][0])


def test_good_shadow_is_promoted_on_every_device_through_the_admin_api(fleet) -> None:
    srv, pool, _comparison = fleet
    admin = AdminClient(srv.cfg)
    st = admin.post(
        "/api/rollouts",
        {
            "model": "tiny",
            "version": "2.0",
            "selector": {"all": "yes"},
            "waves": WAVES,
            "device_timeout": 30,
            "shadow": True,
            "promote": RULE,
            "min_shadow_requests": 200,
        },
    )
    rid = st["id"]
    assert st["shadow"] is True and st["promote"] == RULE and st["min_shadow_requests"] == 200
    wait_for(lambda: srv.engine.status(rid)["state"] != "running", T, "shadow rollout ended")
    st = admin.get(f"/api/rollouts/{rid}")
    assert st["state"] == "completed", st
    assert st["totals"]["active"] == N
    for w in st["waves"]:
        assert w["promoted"] == w["devices"] and w["shadowing"] == 0
        assert w["worst_agreement"] == pytest.approx(0.995)
    for d in pool.devices.values():
        assert d.version == "2.0" and d.promotions == 1 and d.shadow is None, d.id
        shadow = next(m for m in d.manifests if m.version == "2.0" and m.mode == "shadow")
        active = d.active_manifest
        assert active is not None and active.mode == "active" and active.sequence > shadow.sequence
        # the promotion names the very blobs the shadow installed: nothing to download again
        assert {k: a.sha256 for k, a in active.artifacts.items()} == {
            k: a.sha256 for k, a in shadow.artifacts.items()
        }
    # the rollout table shows the shadow columns
    out = io.StringIO()
    Console(file=out, width=250).print(rollout_table(st))
    text = out.getvalue()
    assert "shadowing" in text and "promoted" in text and "worst_agreement" in text
    assert "promote when top1_agreement>=0.98 and latency_ratio<=1.5 over 200 requests" in text


def test_worse_shadow_aborts_and_is_never_activated(fleet) -> None:
    srv, pool, comparison = fleet
    comparison.agreement = 0.80
    rid = start_shadow(srv)
    wait_for(lambda: srv.engine.status(rid)["state"] != "running", T, "shadow rollout ended")
    st = srv.engine.status(rid)
    assert st["state"] == "aborted", st
    assert (
        "promotion rule top1_agreement>=0.98 breached: top1_agreement=0.8 over 300 requests" in st["reason"]
    )
    first = st["waves"][0]
    assert first["worst_agreement"] == pytest.approx(0.8) and first["promoted"] == 0
    assert st["waves"][1]["skipped"] == N - first["devices"]
    wait_for(
        lambda: srv.engine.status(rid)["totals"]["rolled_back"] == first["devices"], T, "wave 1 rolled back"
    )
    wait_for(lambda: all(d.shadow is None for d in pool.devices.values()), T, "every shadow dropped")
    assert len(shadows(pool, "2.0")) == first["devices"]
    assert activated(pool, "2.0") == []  # no device was ever sent an active 2.0 manifest
    assert all(d.version == "1.0" and d.promotions == 0 for d in pool.devices.values())


def test_too_few_requests_hold_until_there_are_enough(fleet) -> None:
    srv, pool, comparison = fleet
    comparison.requests = 150
    rid = start_shadow(srv)
    wave1 = srv.engine.status(rid)["waves"][0]["devices"]
    wait_for(lambda: recorded(srv, rid, 150) == wave1, T, "wave 1 shadowing with 150 requests compared")
    for _ in range(3):  # judged again and again with the stats in: it holds
        srv.engine.tick()
    st = srv.engine.status(rid)
    assert st["state"] == "running" and st["current_wave"] == 1, st
    assert st["waves"][0]["shadowing"] == wave1 and st["waves"][0]["promoted"] == 0
    assert st["waves"][1]["pending"] == N - wave1
    assert activated(pool, "2.0") == []
    comparison.requests = 250  # enough now: promoted, the next wave goes out, it completes
    wait_for(lambda: srv.engine.status(rid)["state"] != "running", T, "shadow rollout ended")
    st = srv.engine.status(rid)
    assert st["state"] == "completed" and st["totals"]["active"] == N, st
    assert sorted(activated(pool, "2.0")) == sorted(pool.devices)


def test_cancelling_a_shadow_rollout_drops_the_shadows_it_left(fleet) -> None:
    srv, pool, comparison = fleet
    comparison.requests = 10  # never enough: every device of wave 1 keeps shadowing
    rid = start_shadow(srv)
    wave1 = srv.engine.status(rid)["waves"][0]["devices"]
    wait_for(lambda: recorded(srv, rid, 10) == wave1, T, "wave 1 shadowing")
    srv.engine.cancel(rid)
    st = srv.engine.status(rid)
    assert st["state"] == "cancelled" and st["waves"][1]["skipped"] == N - wave1, st
    wait_for(lambda: srv.engine.status(rid)["totals"]["rolled_back"] == wave1, T, "shadows rolled back")
    assert all(d.shadow is None and d.version == "1.0" for d in pool.devices.values())
    assert activated(pool, "2.0") == []


def test_an_agent_that_activates_a_shadow_manifest_fails_and_is_rolled_back(fleet) -> None:
    srv, pool, _comparison = fleet
    for d in pool.devices.values():
        d.knows_shadow = False  # agents from before shadows ignore the mode and activate
    rid = start_shadow(srv)
    wait_for(lambda: srv.engine.status(rid)["state"] != "running", T, "shadow rollout ended")
    st = srv.engine.status(rid)
    first = st["waves"][0]["devices"]
    assert st["state"] == "aborted" and st["reason"].startswith("failure rate"), st  # the first one aborts
    reasons = srv.db.query("SELECT reason FROM rollout_devices WHERE rollout=? AND wave=0", (rid,))
    assert "activated_shadow" in {r[0] for r in reasons} <= {"activated_shadow", None}
    wait_for(lambda: srv.engine.status(rid)["totals"]["rolled_back"] == first, T, "wave 1 rolled back")
    assert all(d.version == "1.0" for d in pool.devices.values())


def test_a_shadow_rollout_needs_a_rule_and_a_rule_needs_a_shadow(fleet) -> None:
    srv, _pool, _comparison = fleet
    from fleet.errors import FleetError

    with pytest.raises(FleetError, match="needs a promotion rule"):
        srv.engine.start("tiny", "2.0", {}, [100], shadow=True)
    with pytest.raises(FleetError, match="--promote needs --shadow"):
        srv.engine.start("tiny", "2.0", {}, [100], promote=RULE)
    with pytest.raises(FleetError, match="points the wrong way"):
        srv.engine.start("tiny", "2.0", {}, [100], shadow=True, promote=["top1_agreement<=0.9"])


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    """`edgekit fleet rollout ...` as a user runs it, against the test's server."""
    cmd = [sys.executable, "-m", "edgekit.cli", "fleet", "rollout", *args, "--config", str(cfg)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_cli_starts_a_shadow_rollout_and_shows_its_progress(fleet, tmp) -> None:
    srv, _pool, _comparison = fleet
    cfg = tmp / "fleet.toml"
    cfg.write_text(
        f'[server]\nfleet = "{FLEET}"\nstate_dir = "{srv.cfg["server"]["state_dir"]}"\n'
        f"[admin]\nport = {srv.cfg['admin']['port']}\n"
    )
    bad = cli(cfg, "start", "tiny", "2.0", "--promote", "top1_agreement>=0.98")
    assert bad.returncode == 2 and "--promote needs --shadow" in bad.stderr and "Traceback" not in bad.stderr
    wrong = cli(cfg, "start", "tiny", "2.0", "--shadow", "--promote", "max_abs>=0.1")
    assert wrong.returncode == 2 and "points the wrong way" in wrong.stderr
    assert srv.engine.list()[-1]["version"] == "1.0"  # nothing was started

    rule = [arg for clause in RULE for arg in ("--promote", clause)]
    start = ("start", "tiny", "2.0", "--waves", "25,100", "--shadow", *rule, "--min-shadow-requests", "200")
    p = cli(cfg, *start, "--json")
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["shadow"] is True and st["promote"] == RULE and st["min_shadow_requests"] == 200
    wait_for(lambda: srv.engine.status(st["id"])["state"] != "running", T, "shadow rollout ended")
    table = cli(cfg, "status", st["id"])
    assert table.returncode == 0, table.stderr
    assert "completed" in table.stdout and "promoted" in table.stdout and "0.995" in table.stdout
    done = json.loads(cli(cfg, "status", st["id"], "--json").stdout)
    assert [w["promoted"] for w in done["waves"]] == [w["devices"] for w in done["waves"]]
