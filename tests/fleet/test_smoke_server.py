from __future__ import annotations

import time

import pytest

from tests.fleet.conftest import FLEET
from tests.support.convert_output import make_convert_output
from tests.support.devices import DevicePool

pytestmark = pytest.mark.timeout(60)


def wait_for(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_rollout_all_active(fleet_env, tmp):
    srv = fleet_env["server"]
    srv.registry.publish(make_convert_output(tmp / "out"), "tiny", "1.0")
    pool = DevicePool(FLEET, srv.keys.current_root(), "127.0.0.1", fleet_env["port"], fleet_env["password"])
    for i in range(10):
        pool.add(f"dev-{i:03d}", {"site": "a" if i < 8 else "b"})
    pool.connect_all()
    try:
        wait_for(lambda: len(srv.devices.list()) == 10, what="devices registered")
        rid = srv.engine.start("tiny", "1.0", {"site": "a"}, [50, 100], 0.9, 0.2, 10)
        wait_for(lambda: srv.engine.status(rid)["state"] == "completed", what="rollout completed")
        st = srv.engine.status(rid)
        assert st["totals"]["active"] == 8
        assert all(pool.devices[f"dev-{i:03d}"].version == "1.0" for i in range(8))
        assert pool.devices["dev-009"].version is None
    finally:
        pool.stop()
