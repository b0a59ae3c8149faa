"""GET /metrics on the fleet's admin port: devices and rollouts by state, the outbox's publish
lag, ingestion outcomes, leadership; real server, real devices, parsed with prometheus_client."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fleet.conftest import FLEET
from tests.fleet.helpers import wait_for
from tests.support.convert_output import make_convert_output
from tests.support.devices import DevicePool

pytestmark = pytest.mark.timeout(120)


def scrape(srv: Any, accept: str | None = None) -> tuple[dict[tuple[str, tuple], float], httpx.Response]:
    port = srv.cfg["admin"]["port"]
    r = httpx.get(
        f"http://127.0.0.1:{port}/metrics", headers={"accept": accept} if accept else {}, timeout=10
    )
    r.raise_for_status()
    samples = {}
    if "openmetrics" not in r.headers["content-type"]:
        for fam in text_string_to_metric_families(r.text):
            for s in fam.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, r


@pytest.mark.parametrize("broker_kind", ["embedded"], indirect=True)
def test_fleet_metrics_follow_devices_and_rollouts(fleet_env: dict[str, Any], tmp) -> None:
    srv = fleet_env["server"]
    m, _ = scrape(srv)
    assert m[("edgekit_fleet_devices_online", ())] == 0
    assert m[("edgekit_fleet_leader", ())] == 1
    assert any(k[0] == "edgekit_build_info" and ("component", "fleet") in k[1] for k in m)
    assert any(k[0].startswith("process_") for k in m)

    srv.registry.publish(make_convert_output(tmp / "v1", scale=1.0), "tiny", "1.0")
    pool = DevicePool(FLEET, srv.keys.current_root(), "127.0.0.1", fleet_env["port"], fleet_env["password"])
    try:
        for i in range(6):
            pool.add(f"dev-{i:03d}", {"all": "yes"})
        pool.connect_all()
        wait_for(lambda: scrape(srv)[0][("edgekit_fleet_devices_online", ())] == 6, what="6 online")
        rid = srv.engine.start("tiny", "1.0", {"all": "yes"}, [100], 0.95, 0.05, 20)
        wait_for(lambda: srv.engine.status(rid)["state"] == "completed", what="rollout completed")
        m, _ = scrape(srv)
        assert m[("edgekit_fleet_devices", (("state", "active"),))] == 6
        assert m[("edgekit_fleet_rollouts", (("state", "completed"),))] == 1
        assert m[("edgekit_fleet_manifests_published_total", ())] >= 6
        assert m[("edgekit_fleet_status_messages_total", (("outcome", "accepted"),))] >= 6
        wait_for(lambda: scrape(srv)[0][("edgekit_fleet_outbox_pending", ())] == 0, what="outbox drained")
        assert scrape(srv)[0][("edgekit_fleet_publish_lag_seconds", ())] == 0
    finally:
        pool.stop()

    _, r = scrape(srv, accept="application/openmetrics-text; version=1.0.0")
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")
