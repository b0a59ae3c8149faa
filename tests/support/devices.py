"""Simulated devices: real MQTT clients (paho 2.x) that behave like agents, many per thread.

Each device connects with its id as username, sets a Last Will on its `online` topic, announces
its labels, subscribes to its `desired` topic, verifies every manifest with the real
`edgekit.trust.ManifestVerifier`, and reports downloading -> active (or failed, or nothing) on
`status`. One selector loop drives all clients so thousands of devices need one thread.
Like the real agent, a byte-identical redelivery of the manifest it last accepted is a no-op
(counted in `duplicates`); every non-empty `desired` payload is kept in `payloads`.
With `heartbeat_s`, every connected device re-sends its state like the agent's heartbeat, with
the health object `health(device)` returns (what it served over its last window), if any.
A manifest with mode "shadow" ends in state `shadow` (installed beside the active version, which
keeps serving); while a device holds a shadow its heartbeat carries `shadow_stats(device)`
(edgekit.protocol.ShadowStats), and an active manifest of the shadow's artifacts promotes it
without a download (counted in `promotions`). Any other manifest drops the shadow.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from edgekit import topics
from edgekit.protocol import Health, Online, ShadowStats, Status, VersionDrift, last_will
from edgekit.trust import Manifest, ManifestVerifier, Root, VerificationError

# behaviour(device, manifest) -> "ok" | "fail" | "silent"
Behaviour = Callable[["SimDevice", Manifest], str]
# health(device) -> what it reports in its heartbeat (None: no health object)
HealthReport = Callable[["SimDevice"], Health | None]
# shadow_stats(device) -> how its shadow compares with its active version (None: no report)
ShadowReport = Callable[["SimDevice"], ShadowStats | None]
# drift(device) -> what it served, per version (edgekit.protocol.VersionDrift; None: no field)
DriftReport = Callable[["SimDevice"], list[VersionDrift] | None]


def always_ok(_d: SimDevice, _m: Manifest) -> str:
    return "ok"


@dataclass
class SimDevice:
    id: str
    labels: dict[str, str]
    verifier: ManifestVerifier
    behaviour: Behaviour = always_ok
    client: mqtt.Client | None = None
    statuses: list[Status] = field(default_factory=list)
    manifests: list[Manifest] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    accepted: bytes | None = None  # the payload of the last manifest it accepted
    duplicates: int = 0
    model: str | None = None
    version: str | None = None
    active_at: float | None = None
    active_manifest: Manifest | None = None
    connected: bool = False
    received: int = 0
    sent: int = 0
    shadow: Manifest | None = None  # the shadow manifest it holds beside the active version
    promotions: int = 0  # shadows activated without a second download
    knows_shadow: bool = True  # False: an agent that predates shadows (activates every manifest)


class DevicePool:
    def __init__(
        self,
        fleet: str,
        root: Root,
        host: str,
        port: int,
        password: Callable[[str], str] | None = None,
        report_delay: float = 0.0,
        verify: bool = True,
        heartbeat_s: float = 0.0,
        health: HealthReport | None = None,
        shadow_stats: ShadowReport | None = None,
        drift: DriftReport | None = None,
    ):
        self.fleet, self.root, self.host, self.port = fleet, root, host, port
        self.password = password
        self.report_delay = report_delay
        self.verify = verify
        self.heartbeat_s, self.health = heartbeat_s, health
        self.shadow_stats = shadow_stats
        self.drift = drift
        self.devices: dict[str, SimDevice] = {}
        self.sel = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lock = threading.Lock()

    # ---- set-up ----------------------------------------------------------------------------
    def add(self, device_id: str, labels: dict[str, str], behaviour: Behaviour = always_ok) -> SimDevice:
        d = SimDevice(device_id, labels, ManifestVerifier(self.root, self.fleet, device_id), behaviour)
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=device_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
            userdata=d,
        )
        if self.password:
            c.username_pw_set(device_id, self.password(device_id))
        else:
            c.username_pw_set(device_id)
        c.will_set(topics.online(self.fleet, device_id), last_will(device_id), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_socket_open = lambda _c, _u, sock: self.sel.register(sock, selectors.EVENT_READ, _c)
        c.on_socket_close = lambda _c, _u, sock: self._unregister(sock)
        c.on_socket_register_write = lambda _c, _u, sock: self.sel.modify(
            sock, selectors.EVENT_READ | selectors.EVENT_WRITE, _c
        )
        c.on_socket_unregister_write = lambda _c, _u, sock: self.sel.modify(sock, selectors.EVENT_READ, _c)
        c.max_inflight_messages_set(100)
        d.client = c
        self.devices[device_id] = d
        return d

    def _unregister(self, sock: Any) -> None:
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def connect_all(self, timeout: float = 60.0) -> None:
        """Open every connection (from this thread), then let the loop thread drive them."""
        for d in self.devices.values():
            assert d.client is not None
            d.client.connect(self.host, self.port, keepalive=60)
        self.start()
        deadline = time.monotonic() + timeout
        while not all(d.connected for d in self.devices.values()):
            if time.monotonic() > deadline:
                missing = [d.id for d in self.devices.values() if not d.connected][:5]
                raise TimeoutError(f"devices not connected: {missing}...")
            time.sleep(0.05)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="device-pool", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        for d in self.devices.values():
            if d.client is not None:
                try:
                    d.client.disconnect()
                    d.client.loop_write()
                except Exception:
                    pass
                sock = d.client.socket()
                if sock:
                    self._unregister(sock)
                    sock.close()

    def call_soon(self, fn: Callable[[], None], delay: float = 0.0) -> None:
        with self.lock:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))

    def _run(self) -> None:
        last_misc = last_beat = 0.0
        while not self._stop.is_set():
            for key, mask in self.sel.select(timeout=0.05):
                c = key.data
                if mask & selectors.EVENT_READ:
                    c.loop_read()
                if mask & selectors.EVENT_WRITE:
                    c.loop_write()
            now = time.monotonic()
            due = []
            with self.lock:
                while self._timers and self._timers[0][0] <= now:
                    due.append(heapq.heappop(self._timers)[2])
            for fn in due:
                fn()
            if self.heartbeat_s and now - last_beat >= self.heartbeat_s:
                last_beat = now
                for d in list(self.devices.values()):
                    if d.connected:
                        self._heartbeat(d)
            if now - last_misc > 1.0:
                for d in list(self.devices.values()):
                    if d.client is not None:
                        d.client.loop_misc()
                last_misc = now

    # ---- agent behaviour (runs in the loop thread) ------------------------------------------
    def _on_connect(self, c: mqtt.Client, d: SimDevice, _f: Any, rc: Any, _p: Any = None) -> None:
        if rc.is_failure:
            return
        c.subscribe(topics.desired(self.fleet, d.id), qos=1)
        c.publish(
            topics.online(self.fleet, d.id), Online(d.id, True, d.labels, "sim").to_json(), qos=1, retain=True
        )
        self._status(d, "idle")
        d.connected = True

    def _status(self, d: SimDevice, state: str, m: Manifest | None = None, reason: str | None = None) -> None:
        s = Status(
            device=d.id,
            state=state,
            model=m.model if m else d.model,
            version=m.version if m else d.version,
            sequence=m.sequence if m else None,
            rollout=m.rollout if m else None,
            reason=reason,
            labels=d.labels,
        )
        d.statuses.append(s)
        d.sent += 1
        assert d.client is not None
        d.client.publish(topics.status(self.fleet, d.id), s.to_json(), qos=1)

    def _heartbeat(self, d: SimDevice) -> None:
        """The current state again (the active manifest's, or idle), with the device's health
        and, while it holds a shadow, the shadow's stats."""
        m = d.active_manifest
        stats = self.shadow_stats(d) if self.shadow_stats and d.shadow else None
        s = Status(
            device=d.id,
            state="active" if m else "idle",
            model=d.model,
            version=d.version,
            sequence=m.sequence if m else None,
            rollout=m.rollout if m else None,
            labels=d.labels,
            health=self.health(d) if self.health else None,
            shadow=[stats] if stats else None,
            drift=self.drift(d) if self.drift else None,
        )
        d.sent += 1
        assert d.client is not None
        d.client.publish(topics.status(self.fleet, d.id), s.to_json(), qos=1)

    def _on_message(self, _c: mqtt.Client, d: SimDevice, msg: mqtt.MQTTMessage) -> None:
        d.received += 1
        if not msg.payload:
            return
        d.payloads.append(bytes(msg.payload))
        if msg.payload == d.accepted:
            d.duplicates += 1  # the retained message again (reconnect, server resync): no-op
            return
        try:
            m = d.verifier.verify(msg.payload) if self.verify else None
        except VerificationError as e:
            d.refused.append(e.reason)
            self._status(d, "failed", reason=e.reason)
            return
        assert m is not None
        d.verifier.accept(m)
        d.accepted = bytes(msg.payload)
        d.manifests.append(m)
        shadow, d.shadow = d.shadow, None  # any newer manifest drops the shadow
        mode = m.mode if d.knows_shadow else "active"
        outcome = d.behaviour(d, m)
        if outcome == "silent":
            return
        if outcome == "ok" and mode == "active" and shadow is not None and _same_blobs(m, shadow):
            d.promotions += 1  # the promotion: activate the blob held, no download
            d.model, d.version, d.active_at, d.active_manifest = m.model, m.version, time.monotonic(), m
            self._status(d, "active", m)
            return
        self._status(d, "downloading", m)

        def finish() -> None:
            if outcome == "ok" and mode == "shadow":
                d.shadow = m
                self._status(d, "shadow", m)
            elif outcome == "ok":
                d.model, d.version, d.active_at = m.model, m.version, time.monotonic()
                d.active_manifest = m
                self._status(d, "active", m)
            else:
                self._status(d, "failed", m, reason="smoke_test")

        if self.report_delay:
            self.call_soon(finish, self.report_delay)
        else:
            finish()


def _same_blobs(a: Manifest, b: Manifest) -> bool:
    """Both manifests name the same artifacts (same sha256 per format)."""
    return {k: v.sha256 for k, v in a.artifacts.items()} == {k: v.sha256 for k, v in b.artifacts.items()}
