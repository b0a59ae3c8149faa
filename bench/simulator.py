"""Light simulated devices for bench/fleet.py: a minimal MQTT 3.1.1 client on asyncio, thousands
of devices per event loop, and worker processes when one process cannot hold them all.

paho costs ~1.5 ms of CPU per device per rollout (a Client object, its locks and its own packet
machinery per connection); this speaks only what a device needs, with asyncio.Protocol and no
per-device task: CONNECT (clean session, Last Will on `online`), SUBSCRIBE `desired` at QoS 1
(QoS 0 on NATS, see fleet/nats.py; again, with backoff, after a SUBACK 0x80: NATS during a JetStream election), PUBLISH QoS 0/1
both ways with PUBACK (unacknowledged reports are sent again after a reconnect), and a reconnect
to the next broker URL when a connection drops.

A device behaves like the agent: it verifies every manifest (edgekit.trust, unless told not to),
treats a byte-identical redelivery of the manifest it accepted as a no-op, and reports
downloading -> active on `status` (no download: the bench measures the control plane), and
with `heartbeat_s` repeats its last status that often, as the agent's heartbeat does (which
repairs a report lost with a broker node).

    run_devices(spec) -> Result   # in this process
    Workers(spec, procs)          # N processes; start(), connected(), results()
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from edgekit import topics
from edgekit.brokers import suback_retry_delay
from edgekit.mqttwire import (
    CONNACK,
    DISCONNECT,
    PUBACK,
    PUBLISH,
    SUBACK,
    connect_packet,
    packet,
    parse_publish,
    publish_packet,
    split_packets,
    subscribe_packet,
)
from edgekit.protocol import Online, Status, last_will

RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.5, 16.0


def reconnect_delay(attempt: int, u: float) -> float:
    """Seconds before reconnect `attempt` (1-based), `u` uniform in [0, 1): exponential backoff
    with full jitter, 0.5 s doubling up to 16 s, as a real agent's. A fixed short delay makes
    thousands of devices that a busy broker turned away all come back at once, and again
    (measured on NATS: 20,000 devices with 0.5 s retries never finished connecting)."""
    cap = min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2 ** (attempt - 1))
    return RECONNECT_FIRST_S / 2 + u * cap


# ---- devices -------------------------------------------------------------------------------------
@dataclass
class Spec:
    fleet: str
    devices: list[str]
    password: str | dict[str, str]
    brokers: list[tuple[str, int]]
    root_json: bytes = b""  # empty: no verification
    labels: dict[str, str] = field(default_factory=dict)
    connect_rate: float = 2000.0  # new connections per second, all processes together
    sub_qos: int = 1  # of the `desired` subscription (0 on NATS: no JetStream consumer per device)
    heartbeat_s: float = 0.0  # repeat the last status this often (the agent's default: 30); 0: never


@dataclass
class Result:
    connected: int = 0
    active_at: dict[str, float] = field(default_factory=dict)  # wall clock
    # per device: sequence -> digests of the different payloads seen for it
    payloads: dict[str, dict[int, list[str]]] = field(default_factory=dict)
    refused: int = 0
    redelivered: int = 0
    reconnects: int = 0
    suback_refusals: int = 0


class Device(asyncio.Protocol):
    def __init__(self, pool: Pool, device: str, index: int):
        self.pool, self.id = pool, device
        self.broker = index % len(pool.spec.brokers)  # spread over the nodes
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pid = 0
        self.accepted: bytes | None = None
        # QoS 1 publishes not yet PUBACKed, sent again after a reconnect (as paho does): a report
        # written to a connection that then broke is not lost.
        self.unacked: dict[int, tuple[str, bytes, bool]] = {}
        self.last_status: bytes | None = None  # what the heartbeat repeats
        self.sub_attempt = 0
        self.connect_attempt = 0  # failed connects in a row: the backoff grows with it
        self.rng = random.Random(index)  # deterministic jitter per device
        self.verifier: Any = None
        self.t_desired = topics.desired(pool.spec.fleet, device)
        self.t_status = topics.status(pool.spec.fleet, device)
        self.t_online = topics.online(pool.spec.fleet, device)

    def _next_pid(self) -> int:
        self.pid = self.pid % 65535 + 1
        return self.pid

    async def connect(self) -> None:
        host, port = self.pool.spec.brokers[self.broker]
        try:
            await self.pool.loop.create_connection(lambda: self, host, port)
        except OSError:
            self.connection_lost(None)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf.clear()
        spec = self.pool.spec
        pw = spec.password if isinstance(spec.password, str) else spec.password[self.id]
        transport.write(connect_packet(self.id, self.id, pw, self.t_online, last_will(self.id), 0))

    def connection_lost(self, _exc: Exception | None) -> None:
        was = self.transport is not None
        self.transport = None
        if self.pool.stopping:
            return
        if was:
            self.pool.result.reconnects += 1
        self.broker = (self.broker + 1) % len(self.pool.spec.brokers)  # fail over
        self.connect_attempt += 1
        delay = reconnect_delay(self.connect_attempt, self.rng.random())
        self.pool.loop.call_later(delay, lambda: self.pool.loop.create_task(self.connect()))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for kind, flags, body in split_packets(self.buf):
            if kind == PUBLISH:
                topic, pid, payload, qos = parse_publish(flags, body)
                if qos == 1 and self.transport:
                    self.transport.write(packet(PUBACK, 0, struct.pack("!H", pid)))
                if topic == self.t_desired:
                    self.on_desired(payload)
            elif kind == PUBACK:
                self.unacked.pop(struct.unpack_from("!H", body)[0], None)
            elif kind == CONNACK:
                if body[1] != 0:
                    self.transport.close()  # type: ignore[union-attr]
                    continue
                self.connect_attempt = 0
                self.subscribe()
                again, self.unacked = list(self.unacked.values()), {}
                for topic, payload, retain in again:
                    self.publish(topic, payload, retain)
                spec = self.pool.spec
                online = Online(self.id, True, spec.labels, "sim").to_json()
                self.publish(self.t_online, online.encode() if isinstance(online, str) else online, True)
                if self.accepted is None:  # later connects: its reports stand (or are sent again)
                    self.status("idle")
            elif kind == SUBACK:
                if body[2] >= 0x80:
                    self.pool.result.suback_refusals += 1
                    self.sub_attempt += 1
                    delay = suback_retry_delay(self.sub_attempt)
                    if delay is not None:
                        self.pool.loop.call_later(delay, self.subscribe)
                else:
                    self.pool.subscribed.add(self.id)
                    self.sub_attempt = 0

    def subscribe(self) -> None:
        if self.transport:
            self.transport.write(subscribe_packet(self._next_pid(), self.t_desired, self.pool.spec.sub_qos))

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        pid = self._next_pid()
        self.unacked[pid] = (topic, payload, retain)
        if self.transport:
            self.transport.write(publish_packet(topic, payload, 1, pid, retain))

    def status(self, state: str, m: Any = None) -> None:
        s = Status(
            device=self.id,
            state=state,
            model=m.model if m else None,
            version=m.version if m else None,
            sequence=m.sequence if m else None,
            rollout=m.rollout if m else None,
        )
        raw = s.to_json()
        self.last_status = raw.encode() if isinstance(raw, str) else raw
        self.publish(self.t_status, self.last_status)

    def on_desired(self, payload: bytes) -> None:
        if not payload:
            return
        r = self.pool.result
        if payload == self.accepted:
            r.redelivered += 1
            return
        doc = json.loads(payload)
        seq = int(doc["signed"]["sequence"])
        seen = r.payloads.setdefault(self.id, {}).setdefault(seq, [])
        digest = str(hash(payload))
        if digest not in seen:
            seen.append(digest)
        m = self.pool.verify(self, payload, doc)
        if m is None:
            r.refused += 1
            return
        self.accepted = payload
        self.status("downloading", m)
        r.active_at[self.id] = time.time()
        self.status("active", m)


@dataclass
class _Plain:
    """A manifest's fields without verification (--no-verify)."""

    model: str
    version: str
    sequence: int
    rollout: str | None


class Pool:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.result = Result()
        self.subscribed: set[str] = set()
        self.stopping = False
        self.loop = asyncio.get_running_loop()
        self.root: Any = None
        if spec.root_json:
            from edgekit.trust import load_trusted_root

            self.root = load_trusted_root(spec.root_json)
        self.devices = [Device(self, d, i) for i, d in enumerate(spec.devices)]

    def verify(self, d: Device, payload: bytes, doc: dict[str, Any]) -> Any:
        if self.root is None:
            s = doc["signed"]
            return _Plain(s["model"], s["version"], int(s["sequence"]), s.get("rollout"))
        from edgekit.trust import ManifestVerifier, VerificationError

        if d.verifier is None:
            d.verifier = ManifestVerifier(self.root, self.spec.fleet, d.id)
        try:
            m = d.verifier.verify(payload)
        except VerificationError:
            return None
        d.verifier.accept(m)
        return m

    async def heartbeats(self) -> None:
        """Every `heartbeat_s`, each device repeats its last status, as the agent's heartbeat does
        (agent/updater.py): spread over the period, a slice of the devices each second."""
        period = max(1, round(self.spec.heartbeat_s))
        tick = 0
        while not self.stopping:
            await asyncio.sleep(1.0)
            tick += 1
            for d in self.devices[tick % period :: period]:
                if d.last_status is not None and d.transport:
                    d.publish(d.t_status, d.last_status)

    async def connect_all(self) -> None:
        gap = 1.0 / self.spec.connect_rate
        for d in self.devices:
            self.loop.create_task(d.connect())
            await asyncio.sleep(gap)

    def close(self) -> None:
        self.stopping = True
        for d in self.devices:
            if d.transport:
                d.transport.write(packet(DISCONNECT, 0, b""))
                d.transport.close()


# ---- worker processes ----------------------------------------------------------------------------
def _worker(spec: Spec, conn: Any) -> None:
    async def main() -> None:
        pool = Pool(spec)
        loop = asyncio.get_running_loop()
        beat = loop.create_task(pool.heartbeats()) if spec.heartbeat_s > 0 else None
        await pool.connect_all()
        done = asyncio.Event()
        loop.add_reader(conn.fileno(), done.set)
        while not done.is_set():  # report progress until the parent says stop
            conn.send(("subscribed", len(pool.subscribed)))
            try:
                await asyncio.wait_for(done.wait(), 0.2)
            except TimeoutError:
                pass
        conn.recv()
        pool.result.connected = len(pool.subscribed)
        pool.close()
        if beat:
            beat.cancel()
        await asyncio.sleep(0.2)
        conn.send(("result", pool.result))

    asyncio.run(main())


class Workers:
    """`procs` processes, each running a share of the devices on its own event loop."""

    def __init__(self, spec: Spec, procs: int):
        ctx = mp.get_context("fork")
        self.pipes, self.procs = [], []
        shares = [spec.devices[i::procs] for i in range(procs)]
        for share in shares:
            parent, child = ctx.Pipe()
            # the connect rate is the whole fleet's: each process takes its share of it
            part = Spec(**{**spec.__dict__, "devices": share, "connect_rate": spec.connect_rate / procs})
            p = ctx.Process(target=_worker, args=(part, child), daemon=True)
            self.pipes.append(parent)
            self.procs.append(p)
        self.subscribed = [0] * procs

    def start(self) -> None:
        for p in self.procs:
            p.start()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid]

    def connected(self) -> int:
        """Devices subscribed to their `desired` topic so far."""
        for i, c in enumerate(self.pipes):
            while c.poll():
                kind, value = c.recv()
                if kind == "subscribed":
                    self.subscribed[i] = value
        return sum(self.subscribed)

    def results(self, timeout: float = 60.0) -> Result:
        for c in self.pipes:
            c.send("stop")
        total = Result()
        for c in self.pipes:
            deadline = time.monotonic() + timeout
            while True:
                if not c.poll(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError("a simulator process did not report")
                kind, value = c.recv()
                if kind == "result":
                    break
            total.connected += value.connected
            total.active_at.update(value.active_at)
            total.payloads.update(value.payloads)
            for k in ("refused", "redelivered", "reconnects", "suback_refusals"):
                setattr(total, k, getattr(total, k) + getattr(value, k))
        for p in self.procs:
            p.join(10)
        return total


def default_procs(devices: int) -> int:
    """One process per 8,000 devices (the file-descriptor limit and one core each), at least 1."""
    return max(1, min(os.cpu_count() or 1, -(-devices // 8000)) if devices > 8000 else 1)
