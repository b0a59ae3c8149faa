"""Ingestion of what devices send on `status` and `online`: validate, decide, record.

Devices are not trusted: every message is checked against the typed schema (edgekit.protocol:
bounded size, nesting, strings and integers), the device id in the topic against the topic
layer's rule, the device named in the payload against the topic (which the broker ACL binds to
the sender), and an `active` report against what the fleet offered that device (fleet.offers).
A message that fails gets a named refusal (a counter and a log line, no traceback) and changes
nothing; the caller runs each message in its own savepoint, so not even an unexpected error in
one message can cost the other devices' reports in the same batch.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from edgekit import protocol, topics
from edgekit.protocol import DEVICE_MISMATCH, INVALID_DEVICE_ID, Online, ProtocolError, Status
from fleet.devices import record_online, record_status
from fleet.dialect import Conn
from fleet.offers import NOT_OFFERED, check_active

if TYPE_CHECKING:
    from fleet.rollouts import RolloutEngine

log = logging.getLogger(__name__)

ACCEPTED = "accepted"
EMPTY = "empty"  # an empty payload: a retained message being cleared, nothing to record
UNKNOWN_TOPIC = "unknown_topic"
INTERNAL = "internal"  # a bug, not bad input: the message is lost alone and counted
# Every name bad input can be refused with (INTERNAL is not one: it is a bug).
REFUSALS = frozenset(
    {
        protocol.TOO_LARGE,
        protocol.TOO_DEEP,
        protocol.NOT_JSON,
        protocol.NOT_OBJECT,
        protocol.INVALID_DEVICE_ID,
        protocol.INVALID_STATUS,
        protocol.INVALID_ONLINE,
        protocol.DEVICE_MISMATCH,
        UNKNOWN_TOPIC,
        NOT_OFFERED,
    }
)


# A crash point for fault tests, like agent/faults.py: `EDGEKIT_FLEET_FAULT=before-commit:active`
# makes the server kill -9 itself with a batch holding an `active` status applied but not yet
# committed (so not yet acknowledged to the broker). A timed kill from outside cannot hit that
# window. Unset, it costs one environment lookup per batch.
FAULT_ENV = "EDGEKIT_FLEET_FAULT"
BEFORE_COMMIT = "before-commit:"


def crash_before_commit(states: Iterable[str]) -> None:
    """SIGKILL this process if FAULT_ENV is `before-commit:<state>` and `states` (of the status
    reports in the batch about to commit) holds that state: no cleanup, no flush, no commit."""
    fault = os.environ.get(FAULT_ENV, "")
    if fault.startswith(BEFORE_COMMIT) and fault[len(BEFORE_COMMIT) :] in states:
        log.warning("fault injection: kill -9 before committing a batch (%s)", fault)
        for h in logging.getLogger().handlers:
            h.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def decode(device: str, kind: str, payload: bytes) -> Status | Online:
    """The typed message on `device`'s `kind` topic, or ProtocolError naming what is wrong."""
    if not topics.valid_name(device):
        raise ProtocolError(INVALID_DEVICE_ID, "the topic's device level is not a valid device id")
    msg: Status | Online
    if kind == topics.STATUS:
        msg = Status.from_json(payload)
    elif kind == topics.ONLINE:
        msg = Online.from_json(payload)
    else:
        raise ProtocolError(UNKNOWN_TOPIC, f"no {kind[:40]!r} messages from devices")
    if msg.device != device:  # the topic, which the ACL protects, names the device
        raise ProtocolError(DEVICE_MISMATCH, f"payload names {msg.device!r}")
    return msg


def apply(c: Conn, engine: RolloutEngine, msg: Status | Online, now: float) -> None:
    """Record one decoded message (inside the caller's transaction); ProtocolError if refused."""
    if isinstance(msg, Online):
        record_online(c, msg, now)
        return
    if msg.state == "active" and msg.model:
        refusal = check_active(c, msg.device, msg.model, msg.version)
        if refusal:
            raise ProtocolError(refusal, f"{msg.model} {msg.version} was never offered to this device")
    record_status(c, msg, now)
    engine.on_status(c, msg, now)


class Outcomes:
    """Counts every message's outcome by name and logs refusals, at most `burst` lines per
    reason per `window` seconds (a flood of bad messages must not become a flood of log lines),
    then one line with how many went unlogged. Thread-safe: paho's thread counts unknown topics."""

    def __init__(self, burst: int = 20, window: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.burst, self.window, self.clock = burst, window, clock
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._logged: dict[str, tuple[float, int, int]] = {}  # reason -> (window start, logged, muted)

    def accepted(self, n: int = 1) -> None:
        if n:  # no zero entries: a snapshot names only outcomes that happened
            with self._lock:
                self.counts[ACCEPTED] += n

    def empty(self, n: int = 1) -> None:
        if n:
            with self._lock:
                self.counts[EMPTY] += n

    def refused(self, reason: str, where: str, detail: str, level: int = logging.WARNING) -> None:
        with self._lock:
            self.counts[reason] += 1
            now = self.clock()
            start, logged, muted = self._logged.get(reason, (now, 0, 0))
            if now - start >= self.window:
                if muted:
                    log.warning("%d more %s refusals were not logged", muted, reason)
                start, logged, muted = now, 0, 0
            if logged < self.burst:
                log.log(level, "refused a message %s: %s (%s)", where, reason, detail)
                logged += 1
            else:
                muted += 1
            self._logged[reason] = (start, logged, muted)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


def where(device: str, kind: str) -> str:
    """A log-safe "from <device>/<kind>": repr escapes control characters, length is bounded."""
    return f"from {repr(device)[:80]}/{repr(kind)[:40]}"
