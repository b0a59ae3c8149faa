"""Rollout state lives in SQLite and the server's MQTT session is persistent: a server restart
mid-rollout loses no device report and the rollout carries on to the end (Mosquitto)."""

from __future__ import annotations

import pytest

from fleet.server import FleetServer
from tests.fleet.conftest import FLEET, server_config
from tests.fleet.helpers import wait_for
from tests.support import mosquitto
from tests.support.convert_output import make_convert_output
from tests.support.devices import DevicePool

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed"),
]


def test_restart_mid_rollout(tmp_path):
    users = {f"dev-{i:03d}": "pw" for i in range(50)}
    with mosquitto.Mosquitto(FLEET, users) as m:
        cfg = server_config(
            tmp_path, m.port, embedded=False, username=m.server_user, password=m.server_password
        )
        srv = FleetServer(cfg)
        srv.start()
        pool = DevicePool(
            FLEET, srv.keys.current_root(), "127.0.0.1", m.port, lambda _d: "pw", report_delay=1.0
        )
        try:
            srv.registry.publish(make_convert_output(tmp_path / "out"), "tiny", "1.0")
            for i in range(50):
                pool.add(f"dev-{i:03d}", {"site": "x"})
            pool.connect_all()
            wait_for(lambda: len(srv.devices.list()) == 50, what="devices registered")
            rid = srv.engine.start("tiny", "1.0", {"site": "x"}, [10, 100], 0.95, 0.05, 30)
            srv.stop()  # wave 1 is out; its devices report "active" while no server is running
            wait_for(
                lambda: sum(d.version == "1.0" for d in pool.devices.values()) == 5, what="wave 1 active"
            )

            srv = FleetServer(cfg)
            srv.start()
            wait_for(lambda: srv.engine.status(rid)["state"] == "completed", what="completed after restart")
            st = srv.engine.status(rid)
            assert st["totals"]["active"] == 50 and st["totals"]["timed_out"] == 0
        finally:
            pool.stop()
            srv.stop()
