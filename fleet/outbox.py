"""The outbox: MQTT messages written in the transaction that causes them, published after commit.

A state change and the messages it causes (a manifest on `desired`, a clear, the root chain)
commit together as rows of the `outbox` table, so a crash, a rollback or a broker outage can
neither send a message for a change that did not happen nor lose one for a change that did.
One publisher loop sends pending rows in id order and marks a row sent, by id, once the broker
acknowledged it (QoS 1 PUBACK); an unacknowledged row is published again after `retry_s`, and
every pending row again after a restart.

Re-publishing is idempotent: every message is retained and byte-identical (a manifest is signed
once, when its row is written), and agents ignore a manifest they already hold. Only the newest
pending row of a topic is sent: a retained topic keeps its last message, so an older row is
superseded (marked sent unpublished), and an old row is never retried after a newer one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from fleet import repository as repo
from fleet.db import BaseDatabase
from fleet.repository import Conn

log = logging.getLogger(__name__)

# At most this many published rows await their PUBACK; the rest wait in the table. It equals the
# MQTT link's in-flight window (fleet.mqtt): handing paho more queues them in paho, which scans
# its whole queue on every PUBACK (measured: 5,000 queued manifests cost seconds of CPU).
INFLIGHT_WINDOW = 1000


class Delivery(Protocol):
    def is_published(self) -> bool: ...


class Transport(Protocol):
    def is_connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> Delivery: ...


@dataclass
class _InFlight:
    """A published row awaiting its PUBACK (kept to retry it without reading it again)."""

    delivery: Delivery
    at: float
    topic: str
    payload: bytes
    retain: bool


class Outbox:
    def __init__(
        self,
        db: BaseDatabase,
        transport: Transport,
        retry_s: float = 10.0,
        batch: int = 2000,
        keep_sent_s: float = 3600.0,
        clock: Any = time.monotonic,
        active: Any = None,
        window: int = INFLIGHT_WINDOW,
    ):
        self.db, self.transport = db, transport
        # Whether this process may publish now (fleet.lease: the leader replica alone does).
        self.active = active or (lambda: True)
        self.retry_s, self.batch, self.keep_sent_s, self.clock = retry_s, batch, keep_sent_s, clock
        self.window = window
        self.published = 0  # publish calls, retries included
        self.acked = 0
        self._inflight: dict[int, _InFlight] = {}
        self._cursor = 0  # highest row id handed to the transport
        self._last_rescan = clock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune = clock()

    # ---- writing (inside the caller's transaction) -------------------------------------------
    def add(self, c: Conn, messages: Iterable[tuple[str, bytes, bool]]) -> None:
        """Queue (topic, payload, retain) messages; they go out once the transaction commits."""
        repo.outbox_add(c, messages, time.time())
        # The loop reads under the database lock, which the open transaction holds: it sees
        # these rows once committed, never before, and never if rolled back.
        self._wake.set()

    # ---- the publisher loop ------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            # Taking over (again): rows another replica sent meanwhile are marked sent; start over.
            self._inflight.clear()
            self._cursor = 0
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="fleet-outbox", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            # Short waits while messages are in flight: their acknowledgements are collected here.
            self._wake.wait(0.05 if self._inflight else 0.5)
            self._wake.clear()
            try:
                self.cycle()
            except Exception:  # the database or the broker is away: the next cycle retries
                log.exception("outbox cycle failed")

    def cycle(self) -> int:
        """Collect acknowledgements, publish new rows, retry stuck ones; returns publishes made."""
        now = self.clock()
        if not self.active():
            return 0
        with self.db.lock:
            if self.db.conn.in_transaction:  # this thread's own open transaction: not committed yet
                return 0
        acked = []
        for i, f in self._inflight.items():  # in publish order, the order PUBACKs come back in
            if f.delivery.is_published():
                acked.append(i)
            elif now - f.at < self.retry_s:
                break  # younger rows are looked at once this one is acked (or due for a retry)
        for i in acked:
            del self._inflight[i]
        self.acked += len(acked)
        connected = self.transport.is_connected()
        if now - self._last_rescan > self.retry_s:
            # Now and then from the start again: a row committed with a lower id after a higher
            # one (possible with other databases' sequences) is not skipped for good.
            self._last_rescan, self._cursor = now, 0
        rows: list[tuple[int, str, bytes, bool]] = []
        with self.db.lock:
            if acked:  # before reading pending rows, or these would look unsent and go out again
                with self.db.tx() as c:
                    repo.outbox_mark_sent(c, acked, time.time())
            room = min(self.batch, self.window - len(self._inflight))
            if connected and room > 0:
                rows = [
                    r
                    for r in repo.outbox_pending(self.db.conn, self._cursor, room)
                    if r[0] not in self._inflight
                ]
            newest = {topic: i for i, topic, _p, _r in rows}
            # A retained topic keeps its last message: older rows of a topic with a newer one are done.
            done = [i for i, topic, _p, _r in rows if newest[topic] != i]
            done += [i for i, f in self._inflight.items() if newest.get(f.topic, i) > i]
            prune = now - self._last_prune > 60
            if done or prune:
                with self.db.tx() as c:
                    if done:
                        repo.outbox_mark_sent(c, done, time.time())
                    if prune:
                        self._last_prune = now
                        repo.outbox_prune(c, time.time() - self.keep_sent_s)
        for i in done:
            self._inflight.pop(i, None)
        if not connected:
            # Rows wait in the table, not in the client's memory; the reconnect wakes the loop.
            return 0
        sent = 0
        for i, topic, payload, retain in rows:
            self._cursor = max(self._cursor, i)
            if newest[topic] == i:
                self._publish(i, topic, payload, retain, now)
                sent += 1
        for i, f in list(self._inflight.items()):
            if now - f.at >= self.retry_s:  # paho resends on reconnect; this is for a stuck one
                log.info(
                    "outbox: message %d on %s not acknowledged after %.0f s; again", i, f.topic, self.retry_s
                )
                self._publish(i, f.topic, f.payload, f.retain, now)
                sent += 1
        self.published += sent
        return sent

    def _publish(self, i: int, topic: str, payload: bytes, retain: bool, now: float) -> None:
        delivery = self.transport.publish(topic, payload, retain=retain, qos=1)
        self._inflight[i] = _InFlight(delivery, now, topic, payload, retain)

    def pending(self) -> int:
        with self.db.lock:
            return repo.outbox_count(self.db.conn)

    def flush(self, timeout: float) -> bool:
        """Wait (up to `timeout`) for the running loop to have nothing pending; at once when
        the broker is away."""
        deadline = time.monotonic() + timeout
        while self.transport.is_connected() and time.monotonic() < deadline:
            if self.pending() == 0:
                return True
            self._wake.set()
            time.sleep(0.02)
        return self.pending() == 0

    def drain(self, timeout: float = 30.0) -> bool:
        """Run cycles until nothing is pending (for callers without the loop: tests, tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.cycle()
            if self.pending() == 0:
                return True
            time.sleep(0.02)
        return False
