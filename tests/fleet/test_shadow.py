"""Desired state is a shadow: the server keeps the exact signed bytes it last published per device
and publishes them again, retained and byte-identical, on every reconnect and at start. A broker
that loses its retained messages (restart without persistence, failover, wipe) no longer strands
a device that was offline at that moment; clears are re-sent as clears; agents treat the
redelivery as a no-op."""

from __future__ import annotations

import copy
import itertools
import socket
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgekit import topics
from fleet.db import Database
from fleet.desired import DesiredStore
from fleet.outbox import Outbox
from fleet.publisher import Publisher
from fleet.server import FleetServer
from tests.fleet.conftest import FLEET, server_config
from tests.fleet.helpers import enroller, wait_for
from tests.support import mosquitto
from tests.support.convert_output import make_convert_output
from tests.support.devices import DevicePool, SimDevice
from tests.support.net import free_port

pytestmark = pytest.mark.timeout(240)
needs_mosquitto = pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed")

PW = "pw"
T = 90.0  # generous: the machine is shared and noisy
_ids = itertools.count()


class Spy:
    """A paho client with the observer's credentials recording every `desired` message it gets
    (not the server's: with the client id bound to the username it would replace the server)."""

    def __init__(self, port: int, m: mosquitto.Mosquitto | None = None):
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"spy-{next(_ids)}", clean_session=True)
        if m is not None:
            c.username_pw_set(m.observer_user, m.observer_password)
        c.on_connect = lambda cl, _u, _f, rc, _p: (
            rc.is_failure or cl.subscribe(topics.all_devices(FLEET, "desired"), qos=1)
        )
        c.on_subscribe = lambda *_a: self.subscribed.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        self.client = c
        wait_for(self.subscribed.is_set, T, "spy subscribed")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        device = topics.parse(msg.topic)[1]
        with self.lock:
            self.msgs.append((device, bytes(msg.payload), bool(msg.retain)))

    def last(self, retained_only: bool = False) -> dict[str, bytes]:
        with self.lock:
            return {d: p for d, p, r in self.msgs if r or not retained_only}

    def got(self, device: str, payload: bytes) -> bool:
        with self.lock:
            return any(d == device and p == payload for d, p, _r in self.msgs)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, m: mosquitto.Mosquitto | None, expect: set[str]) -> dict[str, bytes]:
    """What a fresh subscriber gets as retained `desired` messages (waits until `expect` arrived;
    the broker sends every retained match at subscribe time, so anything else would be there)."""
    spy = Spy(port, m)
    try:
        wait_for(lambda: expect <= set(spy.last(retained_only=True)), T, f"retained desired for {expect}")
        return spy.last(retained_only=True)
    finally:
        spy.close()


def pool_for(srv: FleetServer, port: int, password: Any = None) -> DevicePool:
    return DevicePool(FLEET, srv.keys.current_root(), "127.0.0.1", port, password, report_delay=0.05)


def register_then_leave(srv: FleetServer, port: int, ids: list[str], password: Any = None) -> None:
    """Devices the fleet knows (labels) but that are offline when the rollout goes out."""
    pool = pool_for(srv, port, password)
    for d in ids:
        pool.add(d, {"site": "x"})
    pool.connect_all()
    wait_for(lambda: {d["id"] for d in srv.devices.list()} >= set(ids), T, "devices registered")
    pool.stop()


def start_agent(tmp: Path, srv: FleetServer, device: str, port: int) -> tuple[Any, list[str]]:
    """A real `edgekit agent` in this process; returns it and the outcome of every `desired`."""
    from agent.config import DEFAULTS
    from agent.daemon import Agent

    cfg = copy.deepcopy(DEFAULTS)
    cfg["agent"].update(
        device=device,
        fleet=FLEET,
        data_dir=str(tmp / device),
        root=str(srv.keys.root_json),
        formats=["onnx"],
        heartbeat_s=2.0,
        labels={"site": "x"},
    )
    cfg["server"].update(enabled=False)
    cfg["mqtt"].update(port=port, username=device, password=PW, keepalive=5)
    agent = Agent(cfg)
    agent.start()
    assert agent.updater is not None
    outcomes: list[str] = []
    handle = agent.updater.handle

    def recording(payload: bytes) -> str:
        out = handle(payload)
        outcomes.append(out)
        return out

    agent.updater.handle = recording  # type: ignore[method-assign]
    return agent, outcomes


def test_desired_state_is_committed_before_it_is_published(tmp_path):
    db = Database(tmp_path / "fleet.db")
    other = DesiredStore(Database(tmp_path / "fleet.db"))  # sees committed rows only
    sent: list[tuple[str, bytes, bool, int, bytes | None]] = []

    class Acked:
        def is_published(self) -> bool:
            return True

    class Transport:
        def is_connected(self) -> bool:
            return True

        def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> Acked:
            sent.append((topic, payload, retain, qos, other.get(topics.parse(topic)[1])))
            return Acked()

    store = DesiredStore(db)
    outbox = Outbox(db, Transport())
    pub = Publisher(outbox, store, FLEET, None, "http://x")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError), db.tx():
        pub.clear("dev-1")
        raise RuntimeError("the rollout engine's transaction fails")
    assert outbox.drain() and sent == [] and store.get("dev-1") is None  # rolled back: never published
    with db.tx():
        pub.clear("dev-1")
        assert outbox.cycle() == 0 and sent == []  # not before the commit
    assert outbox.drain()
    assert sent == [(topics.desired(FLEET, "dev-1"), b"", True, 1, b"")]  # committed, then sent
    store.put("dev-2", b"signed bytes", 7)
    sent.clear()
    assert pub.republish() == 2 and outbox.drain()
    assert [(t, p, r, q) for t, p, r, q, _ in sent] == [
        (topics.desired(FLEET, "dev-1"), b"", True, 1),
        (topics.desired(FLEET, "dev-2"), b"signed bytes", True, 1),
    ]


@needs_mosquitto
def test_broker_loses_retained_state_offline_device_still_gets_its_manifest(tmp_path):
    on_time = [f"dev-{i:03d}" for i in range(4)]
    late = ["late-0", "late-1"]
    users = {d: PW for d in [*on_time, *late, "agent-0"]}
    m = mosquitto.Mosquitto(FLEET, users).start()
    port = m.port
    cfg = server_config(tmp_path, port, embedded=False, username=m.server_user, password=m.server_password)
    srv = FleetServer(cfg)
    srv.start()
    pool = pool_for(srv, port, lambda _d: PW)
    late_pool = pool_for(srv, port, lambda _d: PW)
    agent = None
    spy: Spy | None = None
    try:
        srv.registry.publish(make_convert_output(tmp_path / "out"), "tiny", "1.0")
        register_then_leave(srv, port, late, lambda _d: PW)
        agent, outcomes = start_agent(tmp_path, srv, "agent-0", port)
        for d in on_time:
            pool.add(d, {"site": "x"})
        pool.connect_all()
        everyone = {*on_time, *late, "agent-0"}
        wait_for(lambda: {d["id"] for d in srv.devices.list()} >= everyone, T, "all devices registered")
        spy = Spy(port, m)

        rid = srv.engine.start("tiny", "1.0", {"site": "x"}, [100], 1.0, 0.0, 600)
        wait_for(lambda: set(spy.last()) >= everyone, T, "every manifest published")
        sent = spy.last()
        assert {d: srv.desired.get(d) for d in everyone} == sent  # the shadow holds the exact bytes
        wait_for(lambda: all(pool.devices[d].version == "1.0" for d in on_time), T, "on-time devices active")
        wait_for(lambda: agent.updater.states.get("tiny").state == "active", T, "agent active")
        assert srv.engine.status(rid)["state"] == "running"  # the late devices hold it open
        spy.close()
        spy = None

        # The broker dies and comes back empty (no persistence): every retained message is gone.
        m.stop()
        resyncs = srv.resyncs
        m = mosquitto.Mosquitto(FLEET, users, port=port).start()
        wait_for(lambda: srv.resyncs > resyncs, T, "server reconnected and re-published")
        again = retained(port, m, everyone)
        assert {d: again[d] for d in everyone} == sent  # byte-identical, retained again

        # The real agent, online throughout, got the very same manifest back: a no-op.
        wait_for(lambda: "duplicate" in outcomes, T, "agent saw the re-published manifest")
        assert not [o for o in outcomes if o.startswith("refused")], outcomes
        st = agent.updater.states.get("tiny")
        assert st.state == "active" and st.version == "1.0"

        # Devices that were offline all along connect only now, to a broker that was wiped.
        for d in late:
            late_pool.add(d, {"site": "x"})
        late_pool.connect_all()
        wait_for(lambda: srv.engine.status(rid)["state"] == "completed", T, "rollout completed")
        for d in late:
            dev = late_pool.devices[d]
            assert dev.payloads[0] == sent[d] and dev.version == "1.0" and not dev.refused
        totals = srv.engine.status(rid)["totals"]
        assert totals["active"] == len(everyone) and totals["timed_out"] == 0 and totals["failed"] == 0
    finally:
        if spy:
            spy.close()
        if agent is not None:
            agent.stop()
        late_pool.stop()
        pool.stop()
        srv.stop()
        m.stop()


def fails_on_2(d: SimDevice, man: Any) -> str:
    return "fail" if man.version == "2.0" and d.id == "dev-c" else "ok"


@needs_mosquitto
def test_clears_are_republished_as_clears(tmp_path):
    """After an abort, dev-a holds a rollback manifest and dev-c (no earlier version) a clear.
    A broker failover to a node with stale retained state gets both corrected on reconnect."""
    users = {"dev-a": PW, "dev-c": PW}
    m = mosquitto.Mosquitto(FLEET, users).start()
    port = m.port
    cfg = server_config(tmp_path, port, embedded=False, username=m.server_user, password=m.server_password)
    srv = FleetServer(cfg)
    srv.start()
    pool = pool_for(srv, port, lambda _d: PW)
    spy: Spy | None = None
    try:
        srv.registry.publish(make_convert_output(tmp_path / "v1", scale=1.0), "tiny", "1.0")
        srv.registry.publish(make_convert_output(tmp_path / "v2", scale=2.0), "tiny", "2.0")
        for d in users:
            pool.add(d, {"site": "x"}, fails_on_2)
        pool.connect_all()
        wait_for(lambda: len(srv.devices.list()) == 2, T, "devices registered")
        r1 = srv.engine.start("tiny", "1.0", {}, [100], 1.0, 0.0, 600, device_ids=["dev-a"])
        wait_for(lambda: srv.engine.status(r1)["state"] == "completed", T, "rollout 1 completed")
        r2 = srv.engine.start("tiny", "2.0", {}, [100], 1.0, 0.0, 600)
        wait_for(lambda: srv.engine.status(r2)["state"] == "aborted", T, "rollout 2 aborted")
        assert srv.engine.device_states(r2)["dev-c"] == "no_rollback"
        wait_for(lambda: pool.devices["dev-a"].manifests[-1].sequence == 3, T, "dev-a's rollback manifest")
        stale_c = pool.devices["dev-c"].payloads[-1]  # the 2.0 manifest that was cleared
        rollback_a = srv.desired.get("dev-a")
        assert rollback_a == pool.devices["dev-a"].payloads[-1]
        assert srv.desired.get("dev-c") == b""  # a clear is stored as a clear

        # Failover to a broker node that has none of it.
        m.stop()
        resyncs = srv.resyncs
        m = mosquitto.Mosquitto(FLEET, users, port=port).start()
        wait_for(lambda: srv.resyncs > resyncs, T, "server reconnected and re-published")
        got = retained(port, m, {"dev-a"})
        assert got["dev-a"] == rollback_a and "dev-c" not in got

        # That node then turns out to hold a stale retained manifest for dev-c (say, restored
        # from an old snapshot); the next reconnect re-sends the clear, which deletes it.
        planter = Spy(port, m)
        info = planter.client.publish(topics.desired(FLEET, "dev-c"), stale_c, qos=1, retain=True)
        info.wait_for_publish(T)
        planter.close()
        assert retained(port, m, {"dev-a", "dev-c"})["dev-c"] == stale_c
        spy = Spy(port, m)
        resyncs = srv.resyncs
        sock = srv.link.client.socket() if srv.link else None
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)  # the server's connection drops; paho reconnects
        wait_for(lambda: srv.resyncs > resyncs, T, "server reconnected and re-published")
        wait_for(lambda: spy.got("dev-c", b"") and spy.got("dev-a", rollback_a), T, "clear re-sent")
        got = retained(port, m, {"dev-a"})
        assert got["dev-a"] == rollback_a and "dev-c" not in got
    finally:
        if spy:
            spy.close()
        pool.stop()
        srv.stop()
        m.stop()


def test_restarted_server_republishes_to_a_fresh_embedded_broker(tmp_path):
    """The embedded broker lives and dies with the server: the start-time re-publish is what
    brings an offline device its manifest after a server restart."""
    port = free_port()
    cfg = server_config(tmp_path, port, embedded=True)
    srv = FleetServer(cfg)
    srv.start()
    password = enroller(srv.state_dir)  # enrolments outlive the server (and its broker)
    pool: DevicePool | None = None
    try:
        srv.registry.publish(make_convert_output(tmp_path / "out"), "tiny", "1.0")
        register_then_leave(srv, port, ["dev-000", "late-0"], password)
        pool = pool_for(srv, port, password)
        pool.add("dev-000", {"site": "x"})
        pool.connect_all()
        rid = srv.engine.start("tiny", "1.0", {"site": "x"}, [100], 1.0, 0.0, 600)
        wait_for(lambda: pool.devices["dev-000"].version == "1.0", T, "dev-000 active")
        sent = srv.desired.get("late-0")
        assert sent
        pool.stop()
        srv.stop()  # takes the embedded broker and every retained message with it

        srv = FleetServer(cfg)
        srv.start()
        assert srv.resyncs == 1
        pool = pool_for(srv, port, password)
        pool.add("late-0", {"site": "x"})
        pool.connect_all()
        wait_for(lambda: srv.engine.status(rid)["state"] == "completed", T, "rollout completed")
        assert pool.devices["late-0"].payloads[0] == sent
    finally:
        if pool is not None:
            pool.stop()
        srv.stop()
