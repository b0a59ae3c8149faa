"""Light simulated devices for bench/fleet.py: a minimal MQTT 3.1.1 client on asyncio, thousands
of devices per event loop, and worker processes when one process cannot hold them all.

paho costs ~1.5 ms of CPU per device per rollout (a Client object, its locks and its own packet
machinery per connection); this speaks only what a device needs, with asyncio.Protocol and no
per-device task: CONNECT (clean session, Last Will on `online`), SUBSCRIBE `desired` at QoS 1
(again, with backoff, after a SUBACK 0x80: NATS during a JetStream election), PUBLISH QoS 0/1
both ways with PUBACK, and a reconnect to the next broker URL when a connection drops.

A device behaves like the agent: it verifies every manifest (edgekit.trust, unless told not to),
treats a byte-identical redelivery of the manifest it accepted as a no-op, and reports
downloading -> active on `status` (no download: the bench measures the control plane).

    run_devices(spec) -> Result   # in this process
    Workers(spec, procs)          # N processes; start(), connected(), results()
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from edgekit import topics
from edgekit.brokers import suback_retry_delay
from edgekit.protocol import Online, Status, last_will

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, DISCONNECT = 1, 2, 3, 4, 8, 9, 14


# ---- MQTT 3.1.1 wire format (pure functions) -----------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


def connect_packet(
    client_id: str, username: str, password: str, will_topic: str, will: bytes, keepalive: int
) -> bytes:
    flags = 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02  # user, password, will retain, will QoS 1, will, clean
    body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body += _str(client_id) + _str(will_topic) + _str(will) + _str(username) + _str(password)
    return packet(CONNECT, 0, body)


def publish_packet(topic: str, payload: bytes, qos: int = 1, pid: int = 0, retain: bool = False) -> bytes:
    body = _str(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return packet(PUBLISH, qos << 1 | int(retain), body)


def subscribe_packet(pid: int, topic: str, qos: int = 1) -> bytes:
    return packet(SUBSCRIBE, 0x02, struct.pack("!H", pid) + _str(topic) + bytes([qos]))


def split_packets(buf: bytearray) -> list[tuple[int, int, bytes]]:
    """Complete packets at the front of `buf` as (type, flags, body); consumes them."""
    out, pos, n = [], 0, len(buf)
    while pos + 2 <= n:
        length, mult, i = 0, 1, pos + 1
        while True:
            if i >= n:
                del buf[:pos]
                return out
            b = buf[i]
            length += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        if i + length > n:
            break
        out.append((buf[pos] >> 4, buf[pos] & 0x0F, bytes(buf[i : i + length])))
        pos = i + length
    del buf[:pos]
    return out


def parse_publish(flags: int, body: bytes) -> tuple[str, int, bytes, int]:
    """(topic, packet id or 0, payload, qos) of an incoming PUBLISH."""
    (tlen,) = struct.unpack_from("!H", body)
    topic = body[2 : 2 + tlen].decode()
    qos = (flags >> 1) & 3
    pos = 2 + tlen
    pid = struct.unpack_from("!H", body, pos)[0] if qos else 0
    return topic, pid, body[pos + (2 if qos else 0) :], qos


# ---- devices -------------------------------------------------------------------------------------
@dataclass
class Spec:
    fleet: str
    devices: list[str]
    password: str | dict[str, str]
    brokers: list[tuple[str, int]]
    root_json: bytes = b""  # empty: no verification
    labels: dict[str, str] = field(default_factory=dict)
    connect_rate: float = 2000.0  # new connections per second (a broker's accept backlog)


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
        self.sub_attempt = 0
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
        self.pool.loop.call_later(0.5, lambda: self.pool.loop.create_task(self.connect()))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for kind, flags, body in split_packets(self.buf):
            if kind == PUBLISH:
                topic, pid, payload, qos = parse_publish(flags, body)
                if qos == 1 and self.transport:
                    self.transport.write(packet(PUBACK, 0, struct.pack("!H", pid)))
                if topic == self.t_desired:
                    self.on_desired(payload)
            elif kind == CONNACK:
                if body[1] != 0:
                    self.transport.close()  # type: ignore[union-attr]
                    continue
                self.subscribe()
                spec = self.pool.spec
                online = Online(self.id, True, spec.labels, "sim").to_json()
                self.publish(self.t_online, online.encode() if isinstance(online, str) else online, True)
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
            self.transport.write(subscribe_packet(self._next_pid(), self.t_desired))

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if self.transport:
            self.transport.write(publish_packet(topic, payload, 1, self._next_pid(), retain))

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
        self.publish(self.t_status, raw.encode() if isinstance(raw, str) else raw)

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
            part = Spec(**{**spec.__dict__, "devices": share})
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
