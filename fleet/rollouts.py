"""The rollout engine: waves over a device selection, advance on success, abort and roll back.

Rules (docs/fleet.md has the operator's view):
- Devices matching the selector are fixed at start and ordered by sha256(rollout id + device),
  a stable random spread. Waves are cumulative percentages: 5,25,100 -> the first 5% of the
  devices, then up to 25%, then all.
- Over the devices dispatched so far: failure rate = (failed + timed_out) / dispatched. Above
  `max_failure_rate` the rollout aborts, at any wave, paused or not.
- When active / dispatched >= `success_threshold` the next wave is dispatched; after the last
  wave, the rollout completes once every device is active, failed or timed out (and aborts if
  the success threshold was then missed).
- A device that has not reached a terminal state `device_timeout` seconds after its manifest
  was sent is timed_out (a failure).
- Abort sends every device that was sent the manifest a rollback: a new, higher sequence
  pointing at the version it ran before. A device with no earlier version gets its retained
  desired state cleared instead (state no_rollback).
- A device that cannot be sent a manifest is refused at dispatch (state refused, with the reason):
  a stored id the topic layer rejects (stored before ids were validated at ingestion), or a
  sequence space it has used up (it reported 2**63-1: the next manifest's sequence would not fit).
  Refused devices count neither as success nor as failure; a rollout whose every device is
  refused aborts with that reason.
- Cancel stops dispatching without rolling back. A rollout paused longer than `max_pause`
  is cancelled, so every rollout ends: completed, aborted or cancelled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from edgekit import topics
from edgekit.protocol import IN_PROGRESS, MAX_SEQUENCE, Status
from fleet.db import Database
from fleet.devices import DeviceRegistry
from fleet.errors import FleetError, NotFoundError
from fleet.publisher import Publisher
from fleet.registry import Registry

log = logging.getLogger(__name__)

RUNNING, PAUSED, COMPLETED, ABORTED, CANCELLED = "running", "paused", "completed", "aborted", "cancelled"
OPEN = (RUNNING, PAUSED)
# rollout_devices.state
PENDING, SENT, ACTIVE, FAILED, TIMED_OUT = "pending", "sent", "active", "failed", "timed_out"
ROLLING_BACK, ROLLED_BACK, ROLLBACK_FAILED, NO_ROLLBACK, SKIPPED, REFUSED = (
    "rolling_back",
    "rolled_back",
    "rollback_failed",
    "no_rollback",
    "skipped",
    "refused",
)
# Why a device was refused at dispatch (rollout_devices.reason).
INVALID_DEVICE_ID, SEQUENCE_EXHAUSTED = "invalid_device_id", "sequence_exhausted"
_WAITING = (SENT, *sorted(IN_PROGRESS))
_DONE = (ACTIVE, FAILED, TIMED_OUT)
COUNT_KEYS = (
    "pending",
    "downloading",
    "active",
    "failed",
    "timed_out",
    "rolling_back",
    "rolled_back",
    "skipped",
    "refused",
)


def parse_duration(text: str | float | int) -> float:
    """ "15m" / "30s" / "2h" / "1d" / 90 -> seconds."""
    if isinstance(text, int | float):
        return float(text)
    t = text.strip().lower()
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for suffix in ("ms", "s", "m", "h", "d"):
        if t.endswith(suffix):
            return float(t[: -len(suffix)]) * units[suffix]
    return float(t)


def wave_bounds(n: int, waves: list[float]) -> list[int]:
    """Cumulative device counts per wave; the last wave always reaches every device."""
    bounds = [min(n, max(1, math.ceil(p * n / 100))) for p in waves]
    bounds[-1] = n
    return [max(bounds[: i + 1]) for i in range(len(bounds))]


def next_sequence(issued: int | None, reported: int | None) -> int | None:
    """The next manifest's sequence for a device: above all it was sent and all it reported.
    None when that passes MAX_SEQUENCE (no int64 column or agent could hold it)."""
    seq = max(issued or 0, reported or 0) + 1
    return seq if seq <= MAX_SEQUENCE else None


def dispatch_refusal(device: str, sequence: int | None) -> str | None:
    """Why a manifest cannot be sent to `device` with `sequence`, or None when it can."""
    if not topics.valid_name(device):
        return INVALID_DEVICE_ID
    if sequence is None:
        return SEQUENCE_EXHAUSTED
    return None


def _count_bucket(state: str) -> str:
    if state in _WAITING:
        return "downloading"
    if state in (ROLLBACK_FAILED,):
        return "failed"
    if state == NO_ROLLBACK:
        return "rolled_back"
    return state


class RolloutEngine:
    def __init__(
        self,
        db: Database,
        registry: Registry,
        devices: DeviceRegistry,
        publisher: Publisher,
        clock: Callable[[], float] = time.time,
        max_pause: float = 7 * 86400,
    ):
        self.db, self.registry, self.devices, self.publisher = db, registry, devices, publisher
        self.clock, self.max_pause = clock, max_pause

    # ---- operator actions -------------------------------------------------------------
    def start(
        self,
        model: str,
        version: str,
        selector: dict[str, str],
        waves: list[float] | None = None,
        success_threshold: float = 0.95,
        max_failure_rate: float = 0.05,
        device_timeout: float = 900.0,
        device_ids: list[str] | None = None,
    ) -> str:
        waves = waves or [100.0]
        if any(not 0 < w <= 100 for w in waves) or waves != sorted(waves):
            raise FleetError("waves must be increasing percentages in (0, 100]", hint="e.g. --waves 5,25,100")
        if not 0 <= success_threshold <= 1 or not 0 <= max_failure_rate <= 1:
            raise FleetError("--success-threshold and --max-failure-rate are fractions in [0, 1]")
        if device_timeout <= 0:
            raise FleetError("--device-timeout must be positive")
        self.registry.version(model, version)  # raises NotFoundError
        targets = [d["id"] for d in self.devices.list(selector)]
        if device_ids:
            wanted = set(device_ids)
            targets = [d for d in targets if d in wanted]
        if not targets:
            raise FleetError(
                f"no known device matches {selector or 'all'}",
                hint="devices appear once they connect; see `edgekit fleet devices`",
            )
        rid = "r-" + secrets.token_hex(4)
        now = self.clock()
        with self.db.tx() as c:
            busy = c.execute(
                "SELECT rd.device, r.id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout"
                f" WHERE r.state IN ('{RUNNING}','{PAUSED}') LIMIT 100000"
            ).fetchall()
            clash = sorted({r["id"] for r in busy if r["device"] in set(targets)})
            if clash:
                raise FleetError(
                    f"devices are in open rollout(s) {', '.join(clash)}",
                    hint="wait for it to end, or abort/cancel it",
                )
            c.execute(
                "INSERT INTO rollouts (id, model, version, selector, waves, success_threshold,"
                " max_failure_rate, device_timeout, state, wave, created, updated)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    rid,
                    model,
                    version,
                    json.dumps(selector),
                    json.dumps(waves),
                    success_threshold,
                    max_failure_rate,
                    device_timeout,
                    RUNNING,
                    -1,
                    now,
                    now,
                ),
            )
            order = sorted(targets, key=lambda d: hashlib.sha256(f"{rid}/{d}".encode()).hexdigest())
            bounds = wave_bounds(len(order), waves)
            rows = []
            for pos, dev in enumerate(order):
                wave = next(i for i, b in enumerate(bounds) if pos < b)
                rows.append((rid, dev, wave, pos, PENDING))
            c.executemany(
                "INSERT INTO rollout_devices (rollout, device, wave, position, state) VALUES (?,?,?,?,?)",
                rows,
            )
            self._advance(c, self._get(c, rid), now)
        log.info(
            "rollout %s started: %s %s to %d devices in waves %s", rid, model, version, len(targets), waves
        )
        return rid

    def pause(self, rid: str) -> None:
        with self.db.tx() as c:
            r = self._get(c, rid)
            if r["state"] != RUNNING:
                raise FleetError(f"rollout {rid} is {r['state']}, not running")
            now = self.clock()
            c.execute(
                "UPDATE rollouts SET state=?, paused_at=?, updated=? WHERE id=?", (PAUSED, now, now, rid)
            )

    def resume(self, rid: str) -> None:
        with self.db.tx() as c:
            r = self._get(c, rid)
            if r["state"] != PAUSED:
                raise FleetError(f"rollout {rid} is {r['state']}, not paused")
            now = self.clock()
            c.execute(
                "UPDATE rollouts SET state=?, paused_at=NULL, updated=? WHERE id=?", (RUNNING, now, rid)
            )
            self._evaluate(c, self._get(c, rid), now)

    def abort(self, rid: str, reason: str = "aborted by operator") -> None:
        with self.db.tx() as c:
            r = self._get(c, rid)
            if r["state"] not in OPEN:
                raise FleetError(f"rollout {rid} already ended ({r['state']})")
            self._abort(c, r, reason, self.clock())

    def cancel(self, rid: str, reason: str = "cancelled by operator") -> None:
        with self.db.tx() as c:
            r = self._get(c, rid)
            if r["state"] not in OPEN:
                raise FleetError(f"rollout {rid} already ended ({r['state']})")
            self._end(c, r, CANCELLED, reason, self.clock())

    # ---- events --------------------------------------------------------------------------
    def on_status(self, c: sqlite3.Connection, msg: Status, now: float) -> None:
        """Apply one device status to the open rollouts it belongs to (inside the caller's tx)."""
        if msg.sequence is None and msg.rollout is None:
            return
        rows = c.execute(
            "SELECT rd.*, r.state AS rstate FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout"
            " WHERE rd.device=?"
            " AND (rd.sequence=? OR rd.rollback_sequence=? OR (? IS NULL AND rd.rollout=?))",
            (msg.device, msg.sequence, msg.sequence, msg.sequence, msg.rollout),
        ).fetchall()
        for rd in rows:
            new = None
            if rd["rollback_sequence"] is not None and msg.sequence == rd["rollback_sequence"]:
                if msg.state == "active":
                    new = ROLLED_BACK
                elif msg.state in ("failed", "rolled_back"):
                    new = ROLLBACK_FAILED
            elif rd["state"] in _WAITING:
                if msg.state == "active":
                    new = ACTIVE
                elif msg.state in ("failed", "rolled_back"):
                    new = FAILED
                elif msg.state in IN_PROGRESS:
                    new = msg.state
            if new and new != rd["state"]:
                c.execute(
                    "UPDATE rollout_devices SET state=?, updated=?, reason=COALESCE(?, reason)"
                    " WHERE rollout=? AND device=?",
                    (new, now, msg.reason, rd["rollout"], rd["device"]),
                )

    def tick(self) -> None:
        """Timeouts, wave advances, aborts, completion. Called often by the server loop."""
        now = self.clock()
        with self.db.tx() as c:
            for r in c.execute(f"SELECT * FROM rollouts WHERE state IN ('{RUNNING}','{PAUSED}')").fetchall():
                c.execute(
                    "UPDATE rollout_devices SET state=?, updated=?, reason='device timeout'"
                    f" WHERE rollout=? AND state IN ({','.join('?' * len(_WAITING))}) AND sent_at < ?",
                    (TIMED_OUT, now, r["id"], *_WAITING, now - r["device_timeout"]),
                )
                self._evaluate(c, r, now)

    # ---- internals -----------------------------------------------------------------------
    def _get(self, c: sqlite3.Connection, rid: str) -> sqlite3.Row:
        row = c.execute("SELECT * FROM rollouts WHERE id=?", (rid,)).fetchone()
        if row is None:
            raise NotFoundError(f"no rollout {rid}", hint="see `edgekit fleet rollout list`")
        return row

    def _counts(self, c: sqlite3.Connection, rid: str, max_wave: int) -> dict[str, int]:
        out = dict.fromkeys((PENDING, SENT, ACTIVE, FAILED, TIMED_OUT, REFUSED, "waiting", "total"), 0)
        for row in c.execute(
            "SELECT state, COUNT(*) AS n FROM rollout_devices WHERE rollout=? AND wave<=? GROUP BY state",
            (rid, max_wave),
        ):
            out[row["state"]] = out.get(row["state"], 0) + row["n"]
            if row["state"] != REFUSED:  # never sent: neither a success nor a failure
                out["total"] += row["n"]
            if row["state"] in _WAITING:
                out["waiting"] += row["n"]
        return out

    def _evaluate(self, c: sqlite3.Connection, r: sqlite3.Row, now: float) -> None:
        if r["state"] == PAUSED and now - (r["paused_at"] or now) > self.max_pause:
            self._end(c, r, CANCELLED, "paused too long", now)
            return
        n = self._counts(c, r["id"], r["wave"])
        if n["total"] == 0:
            if n[REFUSED] and r["state"] == RUNNING:
                self._past_refused_wave(c, r, n[REFUSED], now)
            return
        failed = n[FAILED] + n[TIMED_OUT]
        if failed / n["total"] > r["max_failure_rate"]:
            self._abort(c, r, f"failure rate {failed}/{n['total']} above {r['max_failure_rate']:.0%}", now)
            return
        if r["state"] == PAUSED:
            return
        if n[ACTIVE] / n["total"] >= r["success_threshold"]:
            last_wave = len(json.loads(r["waves"])) - 1
            if r["wave"] < last_wave:
                self._advance(c, r, now)
                return
            if n["waiting"] == 0:
                refused = f", {n[REFUSED]} refused" if n[REFUSED] else ""
                self._end(c, r, COMPLETED, f"{n[ACTIVE]}/{n['total']} active{refused}", now)
                return
        elif n["waiting"] == 0:
            last_wave = len(json.loads(r["waves"])) - 1
            self._abort(
                c,
                r,
                f"success {n[ACTIVE]}/{n['total']} below {r['success_threshold']:.0%}"
                + ("" if r["wave"] == last_wave else f" in wave {r['wave'] + 1}"),
                now,
            )

    def _past_refused_wave(self, c: sqlite3.Connection, r: sqlite3.Row, refused: int, now: float) -> None:
        """Every device dispatched so far was refused: try the next wave, or end (every rollout
        ends, even one no device could be offered)."""
        if r["wave"] < len(json.loads(r["waves"])) - 1:
            self._advance(c, r, now)
        else:
            self._abort(c, r, f"no device could be offered the update ({refused} refused)", now)

    def _refuse(
        self, c: sqlite3.Connection, rid: str, device: str, state: str, reason: str, now: float
    ) -> None:
        log.warning("rollout %s: device %s refused: %s", rid, repr(device)[:80], reason)
        c.execute(
            "UPDATE rollout_devices SET state=?, reason=?, updated=? WHERE rollout=? AND device=?",
            (state, reason, now, rid, device),
        )

    def _advance(self, c: sqlite3.Connection, r: sqlite3.Row, now: float) -> None:
        """Dispatch the next wave that has devices."""
        release = self.registry.version(r["model"], r["version"])
        last_wave = len(json.loads(r["waves"])) - 1
        wave = r["wave"]
        pending: list[sqlite3.Row] = []
        while wave < last_wave:
            wave += 1
            pending = c.execute(
                "SELECT rd.device, d.issued_sequence, d.sequence, d.active_model, d.active_version"
                " FROM rollout_devices rd JOIN devices d ON d.id = rd.device"
                " WHERE rd.rollout=? AND rd.wave=? AND rd.state=? ORDER BY rd.position",
                (r["id"], wave, PENDING),
            ).fetchall()
            if pending:
                break
        c.execute("UPDATE rollouts SET wave=?, updated=? WHERE id=?", (wave, now, r["id"]))
        for d in pending:
            seq = next_sequence(d["issued_sequence"], d["sequence"])
            refusal = dispatch_refusal(d["device"], seq)
            if refusal or seq is None:
                self._refuse(c, r["id"], d["device"], REFUSED, refusal or SEQUENCE_EXHAUSTED, now)
                continue
            c.execute("UPDATE devices SET issued_sequence=? WHERE id=?", (seq, d["device"]))
            c.execute(
                "UPDATE rollout_devices SET state=?, sequence=?, prev_model=?, prev_version=?, sent_at=?,"
                " updated=? WHERE rollout=? AND device=?",
                (SENT, seq, d["active_model"], d["active_version"], now, now, r["id"], d["device"]),
            )
            self.publisher.send(d["device"], release, seq, r["id"])
        log.info("rollout %s: wave %d dispatched (%d devices)", r["id"], wave + 1, len(pending))

    def _abort(self, c: sqlite3.Connection, r: sqlite3.Row, reason: str, now: float) -> None:
        log.warning("rollout %s aborted: %s", r["id"], reason)
        self._end(c, r, ABORTED, reason, now)
        sent = c.execute(
            "SELECT rd.device, rd.prev_model, rd.prev_version, d.issued_sequence, d.sequence"
            " FROM rollout_devices rd JOIN devices d ON d.id = rd.device"
            " WHERE rd.rollout=? AND rd.sequence IS NOT NULL",
            (r["id"],),
        ).fetchall()
        releases: dict[tuple[str, str], dict[str, Any] | None] = {}
        for d in sent:
            if not topics.valid_name(d["device"]):  # sent by a version that stored any id
                self._refuse(c, r["id"], d["device"], ROLLBACK_FAILED, INVALID_DEVICE_ID, now)
                continue
            key = (d["prev_model"], d["prev_version"])
            if key not in releases:
                try:
                    releases[key] = self.registry.version(*key) if key[0] else None
                except NotFoundError:
                    releases[key] = None
            prev = releases[key]
            if prev is None or key == (r["model"], r["version"]):
                self.publisher.clear(d["device"])
                c.execute(
                    "UPDATE rollout_devices SET state=?, updated=? WHERE rollout=? AND device=?",
                    (NO_ROLLBACK, now, r["id"], d["device"]),
                )
                continue
            seq = next_sequence(d["issued_sequence"], d["sequence"])
            if seq is None:
                self._refuse(c, r["id"], d["device"], ROLLBACK_FAILED, SEQUENCE_EXHAUSTED, now)
                continue
            c.execute("UPDATE devices SET issued_sequence=? WHERE id=?", (seq, d["device"]))
            c.execute(
                "UPDATE rollout_devices SET state=?, rollback_sequence=?, updated=?"
                " WHERE rollout=? AND device=?",
                (ROLLING_BACK, seq, now, r["id"], d["device"]),
            )
            self.publisher.send(d["device"], prev, seq, r["id"])

    def _end(self, c: sqlite3.Connection, r: sqlite3.Row, state: str, reason: str, now: float) -> None:
        c.execute(
            "UPDATE rollouts SET state=?, reason=?, ended=?, updated=? WHERE id=?",
            (state, reason, now, now, r["id"]),
        )
        c.execute(
            "UPDATE rollout_devices SET state=?, updated=? WHERE rollout=? AND state=?",
            (SKIPPED, now, r["id"], PENDING),
        )
        log.info("rollout %s %s: %s", r["id"], state, reason)

    # ---- reporting -------------------------------------------------------------------------
    def status(self, rid: str) -> dict[str, Any]:
        with self.db.lock:
            c = self.db.conn
            r = self._get(c, rid)
            waves = json.loads(r["waves"])
            per_wave = [
                {"wave": i + 1, "percent": p, "devices": 0, **dict.fromkeys(COUNT_KEYS, 0)}
                for i, p in enumerate(waves)
            ]
            for row in c.execute(
                "SELECT wave, state, COUNT(*) AS n FROM rollout_devices WHERE rollout=? GROUP BY wave, state",
                (rid,),
            ):
                w = per_wave[row["wave"]]
                w["devices"] += row["n"]
                w[_count_bucket(row["state"])] += row["n"]
            totals = {k: sum(w[k] for w in per_wave) for k in ("devices", *COUNT_KEYS)}
        return {
            "id": r["id"],
            "model": r["model"],
            "version": r["version"],
            "state": r["state"],
            "reason": r["reason"],
            "selector": json.loads(r["selector"]),
            "waves": per_wave,
            "current_wave": r["wave"] + 1,
            "totals": totals,
            "success_threshold": r["success_threshold"],
            "max_failure_rate": r["max_failure_rate"],
            "device_timeout": r["device_timeout"],
            "created": r["created"],
            "ended": r["ended"],
        }

    def list(self) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT id FROM rollouts ORDER BY created")
        return [self.status(r["id"]) for r in rows]

    def device_states(self, rid: str) -> dict[str, str]:
        return {
            r["device"]: r["state"]
            for r in self.db.query("SELECT device, state FROM rollout_devices WHERE rollout=?", (rid,))
        }
