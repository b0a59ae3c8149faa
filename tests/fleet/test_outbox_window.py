"""The outbox's in-flight window on a real Mosquitto: never more than `window` published rows
await their PUBACK (the rest wait in the table, not in paho's queue), and every row still goes
out and is marked sent, once, in order."""

from __future__ import annotations

import time

import pytest

from edgekit import topics
from fleet.db import open_database
from fleet.mqtt import MqttLink
from fleet.outbox import Outbox
from tests.fleet.conftest import FLEET
from tests.fleet.helpers import wait_for
from tests.fleet.test_shadow import Spy
from tests.support import mosquitto

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed"),
]
N, WINDOW = 60, 7


def test_at_most_window_rows_in_flight_and_all_are_delivered_once(tmp_path):
    db = open_database("", tmp_path)
    with mosquitto.Mosquitto(FLEET, {}) as m:
        spy = Spy(m.port, m)
        link = MqttLink(
            {
                "host": "127.0.0.1",
                "port": m.port,
                "client_id": "outbox-window-test",
                "username": m.server_user,
                "password": m.server_password,
            },
            lambda _t, _p: None,
            [],
        )
        link.connect()
        try:
            box = Outbox(db, link, retry_s=60.0, window=WINDOW)
            devices = [f"dev-{i:03d}" for i in range(N)]
            with db.tx() as c:
                box.add(c, [(topics.desired(FLEET, d), f"m-{d}".encode(), True) for d in devices])
            peak, deadline = 0, time.monotonic() + 30  # PUBACKs arrive on paho's thread
            while box.pending() and time.monotonic() < deadline:
                box.cycle()
                peak = max(peak, len(box._inflight))
                time.sleep(0.001)
            assert box.pending() == 0
            assert 0 < peak <= WINDOW
            assert box.published == N  # no retries: every row went out once
            wait_for(lambda: len(spy.msgs) >= N, 30, "every message delivered")
            assert [d for d, _p, _r in spy.msgs] == devices  # in row order
        finally:
            link.close()
            spy.client.loop_stop()
            db.close()
