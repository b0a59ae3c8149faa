"""The outbox on a real Mosquitto: messages committed while the broker is down are delivered once
it is back, rows left by a stopped server are published by the next one, a row is marked sent
only after the broker's PUBACK, and only the newest row of a topic is published."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest

from edgekit import topics
from edgekit.protocol import MAX_SEQUENCE
from fleet import repository as repo
from fleet.db import Database
from fleet.mqtt import MqttLink
from fleet.outbox import Outbox
from fleet.server import FleetServer
from tests.fleet.conftest import FLEET, server_config
from tests.fleet.helpers import wait_for
from tests.fleet.test_shadow import Spy
from tests.support import mosquitto
from tests.support.convert_output import make_convert_output
from tests.support.devices import DevicePool
from tests.support.net import free_port

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed"),
]
PW = "pw"
T = 90.0


def sequences(payloads: list[bytes]) -> dict[int, set[bytes]]:
    """sequence -> the distinct signed payloads seen for it."""
    out: dict[int, set[bytes]] = defaultdict(set)
    for p in payloads:
        if p:
            out[json.loads(p)["signed"]["sequence"]].add(p)
    return out


def test_rollout_started_while_the_broker_is_down_is_delivered_once_it_is_back(tmp_path):
    ids = [f"dev-{i:03d}" for i in range(20)]
    m = mosquitto.Mosquitto(FLEET, dict.fromkeys(ids, PW)).start()
    cfg = server_config(tmp_path, m.port, embedded=False, username=m.server_user, password=m.server_password)
    srv = FleetServer(cfg)
    srv.start()
    pool = spy = None
    try:
        srv.registry.publish(make_convert_output(tmp_path / "out"), "tiny", "1.0")
        register = DevicePool(FLEET, srv.keys.current_root(), "127.0.0.1", m.port, lambda _d: PW)
        for d in ids:
            register.add(d, {"site": "x"})
        register.connect_all()
        wait_for(lambda: {d["id"] for d in srv.devices.list()} >= set(ids), T, "devices registered")
        register.stop()

        m.terminate()
        assert srv.link is not None and srv.outbox is not None
        wait_for(lambda: not srv.link.is_connected(), T, "server saw the broker go")
        rid = srv.engine.start("tiny", "1.0", {"site": "x"}, [100], 1.0, 0.0, 600)
        assert srv.outbox.pending() >= len(ids)  # committed, waiting for the broker
        stored = {d: srv.desired.get(d) for d in ids}
        assert all(stored.values())

        m.start()  # same port; no persistence: the broker comes back empty
        wait_for(lambda: srv.outbox.pending() == 0, T, "outbox drained after the broker came back")
        spy = Spy(m.port, m)
        pool = DevicePool(FLEET, srv.keys.current_root(), "127.0.0.1", m.port, lambda _d: PW)
        for d in ids:
            pool.add(d, {"site": "x"})
        pool.connect_all()
        wait_for(lambda: srv.engine.status(rid)["state"] == "completed", T, "rollout completed")

        for d in ids:
            dev = pool.devices[d]
            assert [x.sequence for x in dev.manifests] == [json.loads(stored[d])["signed"]["sequence"]]
            assert dev.payloads and set(dev.payloads) == {stored[d]}  # none lost, none different
            assert not dev.refused
        seen = defaultdict(list)
        for device, payload, _retained in spy.msgs:
            seen[device].append(payload)
        for d in ids:  # whatever the broker carried, one sequence never had two contents
            assert all(len(v) == 1 for v in sequences(seen[d]).values())
    finally:
        if spy:
            spy.close()
        if pool:
            pool.stop()
        srv.stop()
        m.stop()


def link_for(m: mosquitto.Mosquitto) -> MqttLink:
    return MqttLink(
        {
            "host": "127.0.0.1",
            "port": m.port,
            "client_id": m.server_user,
            "username": m.server_user,
            "password": m.server_password,
            "persistent_session": False,
        },
        lambda _t, _p: None,
        [],
    )


def test_rows_left_by_a_stopped_server_are_published_by_the_next_one(tmp_path):
    m = mosquitto.Mosquitto(FLEET, {}, port=free_port()).start()
    link: Any = None
    spy = None
    try:
        db = Database(tmp_path / "fleet.db")
        first = Outbox(db, link_for(m))  # never started nor connected: the server stopped here
        topic = {d: topics.desired(FLEET, d) for d in ("dev-0", "dev-1", "dev-2")}
        with db.tx() as c:
            first.add(c, [(topic[d], f"{d} v1".encode(), True) for d in ("dev-0", "dev-1", "dev-2")])
        with db.tx() as c:
            first.add(c, [(topic["dev-0"], b"dev-0 v2", True)])  # supersedes dev-0 v1
        with pytest.raises(RuntimeError), db.tx() as c:
            first.add(c, [(topic["dev-1"], b"rolled back", True)])
            raise RuntimeError("never committed")
        db.close()

        spy = Spy(m.port, m)
        db = Database(tmp_path / "fleet.db")  # the next server
        link = link_for(m)
        link.connect()
        outbox = Outbox(db, link)
        assert outbox.pending() == 4
        assert outbox.drain(T)
        wait_for(lambda: len(spy.msgs) >= 3, T, "messages at the spy")
        got = sorted(p for _d, p, _r in spy.msgs)
        assert got == [b"dev-0 v2", b"dev-1 v1", b"dev-2 v1"]  # once each; the old dev-0 row not at all
        assert outbox.acked == 3 and outbox.published == 3
        with db.lock:
            assert repo.outbox_count(db.conn, pending=False) == 4  # 3 acknowledged + 1 superseded
        assert outbox.drain(1.0) and outbox.published == 3  # nothing is sent twice
        db.close()
    finally:
        if spy:
            spy.close()
        if link:
            link.close()
        m.stop()


def test_sequences_are_assigned_atomically_without_overflow(tmp_path):
    """Dispatch assigns each device max(issued, reported) + 1 in one UPDATE ... RETURNING; a
    device at the top of the sequence space is left out (refused), never wrapped or widened."""
    db = Database(tmp_path / "fleet.db")
    with db.tx() as c:
        c.executemany(
            "INSERT INTO devices (id, issued_sequence, sequence) VALUES (?,?,?)",
            [
                ("a", 0, None),
                ("b", 7, 3),
                ("c", 3, 9),
                ("full", 0, MAX_SEQUENCE),
                ("edge", MAX_SEQUENCE - 1, None),
            ],
        )
        got = repo.assign_sequences(c, ["a", "b", "c", "full", "edge", "unknown"])
    assert got == {"a": 1, "b": 8, "c": 10, "edge": MAX_SEQUENCE}
    with db.tx() as c:
        again = repo.assign_sequences(c, ["a", "b", "edge"])
    assert again == {"a": 2, "b": 9}  # issued_sequence moved: the next manifest goes above it
    with db.lock:
        rows = dict(db.conn.execute("SELECT id, issued_sequence FROM devices").fetchall())
    assert rows["full"] == 0 and rows["edge"] == MAX_SEQUENCE and isinstance(rows["edge"], int)
    db.close()
