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
- Health gates (fleet.gates, optional): metrics of the devices active on the new version, from
  their heartbeats' health reports, are judged against each gate whenever the rollout runs; a
  breach aborts (and rolls back) or pauses, per `on_breach`. With gates or a `bake` time, a wave
  that met its success rule advances (or completes) only after `bake` seconds without a breach.
- Shadow canary (fleet.shadow, optional): waves send manifests with mode "shadow" (installed
  beside the active version, never serving); a member that reports `shadow` is shadowing and
  counts as waiting. Its heartbeats' shadow stats are judged against the promotion rule: once it
  holds over `min_shadow_requests` requests the device is sent an active manifest of the same
  artifacts (new sequence) and is active when it reports so; any device breaching the rule
  aborts the rollout and rolls every device back, so no device activates a worse model.
- Cancel stops dispatching without rolling back. A rollout paused longer than `max_pause`
  is cancelled, so every rollout ends: completed, aborted or cancelled.

The rules are fleet.decide, a pure function; this module does the I/O around it. Manifests are
signed before the transaction that records them (with the sequences the database will assign,
read just before; the rare device whose sequence moved meanwhile is signed again inside), and
the transaction writes the rollout state, the desired-state shadow and the outbox rows together.
Every state change is a compare-and-set, so the engine thread and an operator action never
dispatch one wave twice.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from edgekit import topics
from edgekit.protocol import IN_PROGRESS, MAX_SEQUENCE, Status
from fleet import repository as repo
from fleet.db import BaseDatabase
from fleet.decide import (
    Abort,
    Advance,
    Cancel,
    Complete,
    Counts,
    Decision,
    Pause,
    StartBake,
    decide,
    shadow_member_state,
    timeout_cutoff,
)
from fleet.deltas import attach as attach_deltas
from fleet.devices import DeviceRegistry, rollout_drift_psi
from fleet.errors import FleetError, NotFoundError
from fleet.gates import ABORT, DRIFT_PSI, ON_BREACH, Gate, fleet_baseline, metrics, parse_gates
from fleet.publisher import ManifestBatch, Publisher
from fleet.registry import Registry
from fleet.repository import Conn, RolloutRow
from fleet.shadow import Stats, judge, parse_rule
from fleet.shadow import check as check_shadow

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
# a shadow rollout's members: shadowing (installed beside the active version, being compared),
# then promoting (sent the active manifest of the same artifacts)
SHADOWING, PROMOTING = "shadow", "promoting"
# Why a device was refused at dispatch (rollout_devices.reason), or failed a shadow rollout.
INVALID_DEVICE_ID, SEQUENCE_EXHAUSTED = "invalid_device_id", "sequence_exhausted"
ACTIVATED_SHADOW = "activated_shadow"  # an agent that ignores the mode activated a shadow manifest
# Sent and not yet at an end: these time out `device_timeout` after their (latest) manifest.
# A shadowing device has finished installing; how soon it has compared enough requests
# depends on its traffic, so it waits without a deadline (abort or cancel end it).
_TIMED = (SENT, *sorted(IN_PROGRESS), PROMOTING)
_WAITING = (*_TIMED, SHADOWING)
_UNPROMOTED = (SENT, *sorted(IN_PROGRESS), SHADOWING)  # what cancelling a shadow rollout rolls back
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


def _drift_gated(r: RolloutRow) -> bool:
    """Drift scores are read only for a rollout that has a drift gate (they cost a query)."""
    return any(g.metric == DRIFT_PSI for g in r.gates)


def _mode(shadow: bool) -> str:
    """The manifest mode a rollout's waves send."""
    return "shadow" if shadow else "active"


def _count_bucket(state: str) -> str:
    if state in _WAITING:
        return "downloading"
    if state in (ROLLBACK_FAILED,):
        return "failed"
    if state == NO_ROLLBACK:
        return "rolled_back"
    return state


Presigned = dict[str, tuple[int, bytes]]  # device -> (the sequence it was signed for, wire bytes)


class RolloutEngine:
    def __init__(
        self,
        db: BaseDatabase,
        registry: Registry,
        devices: DeviceRegistry,
        publisher: Publisher,
        clock: Callable[[], float] = time.time,
        max_pause: float = 7 * 86400,
        timeout_check_s: float = 0.5,
        deltas: bool = True,
    ):
        self.db, self.registry, self.devices, self.publisher = db, registry, devices, publisher
        self.deltas = deltas
        self.clock, self.max_pause = clock, max_pause
        # tick() runs after every batch of reports; device timeouts need not be looked for that often
        self.timeout_check_s = timeout_check_s
        self._timeouts_checked = float("-inf")

    def _release(self, model: str, version: str) -> dict:
        """The version as manifests carry it: with deltas from the versions devices run, if enabled."""
        release = self.registry.version(model, version)
        return attach_deltas(self.registry, release) if self.deltas else release

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
        gates: list[str] | tuple[Gate, ...] = (),
        bake: float = 0.0,
        on_breach: str = ABORT,
        shadow: bool = False,
        promote: list[str] | tuple[Gate, ...] = (),
        min_shadow_requests: int = 200,
    ) -> str:
        waves = waves or [100.0]
        parsed = parse_gates(str(g) for g in gates)  # FleetError naming the bad one
        rule = parse_rule(str(g) for g in promote)
        if shadow:
            check_shadow(rule, min_shadow_requests)
        elif rule:
            raise FleetError("--promote needs --shadow", hint="a promotion rule judges a shadow rollout")
        if not 0 <= bake <= 30 * 86400:
            raise FleetError("--bake must be between 0 and 30 days")
        if on_breach not in ON_BREACH:
            raise FleetError(f"--on-breach must be one of {', '.join(ON_BREACH)}")
        if any(not 0 < w <= 100 for w in waves) or waves != sorted(waves):
            raise FleetError("waves must be increasing percentages in (0, 100]", hint="e.g. --waves 5,25,100")
        if not 0 <= success_threshold <= 1 or not 0 <= max_failure_rate <= 1:
            raise FleetError("--success-threshold and --max-failure-rate are fractions in [0, 1]")
        if device_timeout <= 0:
            raise FleetError("--device-timeout must be positive")
        release = self._release(model, version)  # NotFoundError
        with self.db.lock:
            targets = repo.select_devices(self.db.conn, selector, device_ids or None)
        if not targets:
            raise FleetError(
                f"no known device matches {selector or 'all'}",
                hint="devices appear once they connect; see `edgekit fleet devices`",
            )
        rid = "r-" + secrets.token_hex(4)
        order = sorted(targets, key=lambda d: hashlib.sha256(f"{rid}/{d}".encode()).hexdigest())
        bounds = wave_bounds(len(order), waves)
        members = [(dev, bisect.bisect_right(bounds, pos), pos) for pos, dev in enumerate(order)]
        batch = self.publisher.batch(release, rid, _mode(shadow))
        presigned = self._presign(batch, [d for d, w, _p in members if w == 0])
        now = self.clock()
        r = RolloutRow(
            rid,
            model,
            version,
            selector,
            tuple(waves),
            success_threshold,
            max_failure_rate,
            device_timeout,
            RUNNING,
            -1,
            None,
            now,
            None,
            None,
            parsed,
            float(bake),
            on_breach,
            None,
            shadow,
            rule if shadow else (),
            int(min_shadow_requests) if shadow else 0,
        )
        with self.db.tx() as c:
            repo.insert_rollout(c, r, now)
            repo.insert_members(c, rid, members, PENDING)
            clash = repo.clashes(c, rid, OPEN)
            if clash:  # raising rolls the inserts back
                raise FleetError(
                    f"devices are in open rollout(s) {', '.join(clash)}",
                    hint="wait for it to end, or abort/cancel it",
                )
            self._dispatch(c, r, 0, batch, presigned, now)
        log.info(
            "rollout %s started: %s %s to %d devices in waves %s", rid, model, version, len(targets), waves
        )
        return rid

    def pause(self, rid: str) -> None:
        now = self.clock()
        with self.db.tx() as c:
            r = self._get(c, rid)
            if not repo.change_state(c, rid, PAUSED, now, (RUNNING,), paused_at=now):
                raise FleetError(f"rollout {rid} is {r.state}, not running")

    def resume(self, rid: str) -> None:
        now = self.clock()
        with self.db.tx() as c:
            r = self._get(c, rid)
            if not repo.change_state(c, rid, RUNNING, now, (PAUSED,)):
                raise FleetError(f"rollout {rid} is {r.state}, not paused")
            repo.reset_bake(c, rid)  # the wave is judged again for a whole bake time
        self._step(rid, now)

    def abort(self, rid: str, reason: str = "aborted by operator") -> None:
        r = self._read(rid)
        if r.state not in OPEN or not self._abort(r, reason, self.clock()):
            raise FleetError(f"rollout {rid} already ended ({self._read(rid).state})")

    def cancel(self, rid: str, reason: str = "cancelled by operator") -> None:
        if not self._cancel(self._read(rid), reason, self.clock(), expect=OPEN):
            raise FleetError(f"rollout {rid} already ended ({self._read(rid).state})")

    # ---- events --------------------------------------------------------------------------
    def on_status(self, c: Conn, msg: Status, now: float) -> None:
        """Apply one device status to the open rollouts it belongs to (inside the caller's tx)."""
        if msg.sequence is not None or msg.rollout is not None:
            self._apply_status(c, msg, now)
        if msg.shadow:  # after the state: a report that says "shadow" may carry the first stats
            stats = [
                (
                    s.model,
                    s.version,
                    Stats(s.requests, s.top1_agreement, s.cosine_mean, s.max_abs, s.latency_ratio),
                )
                for s in msg.shadow
            ]
            repo.record_shadow_stats(c, msg.device, stats, SHADOWING, OPEN, now)

    def _apply_status(self, c: Conn, msg: Status, now: float) -> None:
        for rd in repo.members_for_status(c, msg.device, msg.sequence, msg.rollout):
            new, why = None, msg.reason
            if rd["rollback_sequence"] is not None and msg.sequence == rd["rollback_sequence"]:
                if msg.state == "active":
                    new = ROLLED_BACK
                elif msg.state in ("failed", "rolled_back"):
                    new = ROLLBACK_FAILED
            elif rd["shadow"]:
                if rd["state"] in _WAITING:
                    new = shadow_member_state(rd["state"], msg.state)
                    if new == FAILED and msg.state == "active":
                        why = ACTIVATED_SHADOW
            elif rd["state"] in _WAITING:
                if msg.state == "active":
                    new = ACTIVE
                elif msg.state in ("failed", "rolled_back"):
                    new = FAILED
                elif msg.state in IN_PROGRESS:
                    new = msg.state
            if new and new != rd["state"]:
                repo.set_member_states(c, rd["rollout"], [(rd["device"], new, why)], now)

    def tick(self) -> None:
        """Timeouts, then one decision per open rollout, carried out. Called often by the server loop."""
        now = self.clock()
        todo: list[tuple[RolloutRow, Decision]] = []
        promotions: list[tuple[RolloutRow, list[str]]] = []
        check_timeouts = now - self._timeouts_checked >= self.timeout_check_s
        if check_timeouts:
            self._timeouts_checked = now
        with self.db.tx() as c:
            for r in repo.open_rollouts(c, OPEN):
                if check_timeouts:
                    cutoff = timeout_cutoff(now, r.device_timeout)
                    repo.replace_state(
                        c, r.id, _TIMED, TIMED_OUT, now, sent_before=cutoff, reason="device timeout"
                    )
                promote, breach = self._shadow(c, r)
                d = decide(r.view(self.max_pause), self._counts(c, r), now, self._health(c, r), breach)
                if d is not None:
                    todo.append((r, d))
                if promote and not isinstance(d, Abort | Cancel | Pause):
                    promotions.append((r, promote))
        for r, devices in promotions:
            self._promote(r, devices, now)
        for r, d in todo:
            self._carry_out(r, d, now)

    # ---- internals -----------------------------------------------------------------------
    def _get(self, c: Conn, rid: str) -> RolloutRow:
        r = repo.get_rollout(c, rid)
        if r is None:
            raise NotFoundError(f"no rollout {rid}", hint="see `edgekit fleet rollout list`")
        return r

    def _read(self, rid: str) -> RolloutRow:
        with self.db.lock:
            return self._get(self.db.conn, rid)

    def _counts(self, c: Conn, r: RolloutRow) -> Counts:
        n: dict[str, int] = {}
        for _wave, state, k in repo.state_counts(c, r.id, r.wave):
            n[state] = n.get(state, 0) + k
        return Counts(
            dispatched=sum(k for s, k in n.items() if s != REFUSED),
            active=n.get(ACTIVE, 0),
            failed=n.get(FAILED, 0),
            timed_out=n.get(TIMED_OUT, 0),
            waiting=sum(n.get(s, 0) for s in _WAITING),
            refused=n.get(REFUSED, 0),
        )

    def _health(self, c: Conn, r: RolloutRow) -> dict[str, float | None] | None:
        """The gate metrics of the waves dispatched so far (read only when the rollout has gates)."""
        if not r.gates or r.state != RUNNING:
            return None
        drift = rollout_drift_psi(c, r.id, r.model, r.version, max_wave=r.wave) if _drift_gated(r) else None
        return metrics(repo.member_health(c, r, r.wave), fleet_baseline(repo.fleet_p95(c, r.model)), drift)

    def _shadow(self, c: Conn, r: RolloutRow) -> tuple[list[str], str | None]:
        """A running shadow rollout's devices to promote and its breach (fleet.shadow.judge)."""
        if not r.shadow or r.state != RUNNING:
            return [], None
        return judge(r.promote, r.min_shadow_requests, repo.shadow_stats(c, r.id, SHADOWING))

    def _step(self, rid: str, now: float) -> None:
        with self.db.tx() as c:
            r = self._get(c, rid)
            d = None
            if r.state in OPEN:
                _promote, breach = self._shadow(c, r)  # promotions wait for the next tick
                d = decide(r.view(self.max_pause), self._counts(c, r), now, self._health(c, r), breach)
        if d is not None:
            self._carry_out(r, d, now)

    def _carry_out(self, r: RolloutRow, d: Decision, now: float) -> None:
        if isinstance(d, Advance):
            self._advance(r, now)
        elif isinstance(d, StartBake):
            with self.db.tx() as c:
                repo.start_bake(c, r.id, r.wave, RUNNING, now)
        elif isinstance(d, Pause):
            with self.db.tx() as c:
                if repo.change_state(c, r.id, PAUSED, now, (RUNNING,), reason=d.reason, paused_at=now):
                    log.warning("rollout %s paused: %s", r.id, d.reason)
        elif isinstance(d, Abort):
            self._abort(r, d.reason, now)
        elif isinstance(d, Complete):
            self._end(r, COMPLETED, d.reason, now, expect=(r.state,))
        elif isinstance(d, Cancel):
            self._cancel(r, d.reason, now, expect=(r.state,))

    def _cancel(self, r: RolloutRow, reason: str, now: float, expect: tuple[str, ...]) -> bool:
        """End `r` without rolling back. A shadow rollout's devices not yet promoted would keep
        comparing a shadow nobody will promote: they get their previous manifest back (which
        drops the shadow); promoted devices keep the new version."""
        if r.shadow:
            return self._abort(r, reason, now, CANCELLED, expect, only=_UNPROMOTED)
        return self._end(r, CANCELLED, reason, now, expect=expect)

    def _presign(self, batch: ManifestBatch, devices: list[str]) -> Presigned:
        """Sign, outside any transaction, with the sequences the devices will be assigned."""
        with self.db.lock:
            snap = repo.sequence_snapshot(self.db.conn, devices)
        out: Presigned = {}
        for d in devices:
            if d not in snap:
                continue
            seq = next_sequence(*snap[d])
            if seq is not None and dispatch_refusal(d, seq) is None:
                out[d] = (seq, batch.sign(d, seq))
        return out

    def _advance(self, r: RolloutRow, now: float) -> None:
        """Dispatch the next wave that has pending devices (or move to the last wave if none has)."""
        with self.db.lock:
            wave = repo.next_pending_wave(self.db.conn, r.id, r.wave, PENDING)
            pending = repo.members_in_wave(self.db.conn, r.id, wave, PENDING) if wave is not None else []
        if wave is None:
            with self.db.tx() as c:
                repo.move_wave(c, r.id, r.wave, len(r.waves) - 1, RUNNING, now)
            return
        batch = self.publisher.batch(self._release(r.model, r.version), r.id, _mode(r.shadow))
        presigned = self._presign(batch, [m.device for m in pending])
        with self.db.tx() as c:
            self._dispatch(c, r, wave, batch, presigned, now)

    def _promote(self, r: RolloutRow, devices: list[str], now: float) -> None:
        """Send each device whose shadow passed the rule the same release's manifest with mode
        "active" and a new sequence: the agent activates the blob it holds (no second download)."""
        batch = self.publisher.batch(self._release(r.model, r.version), r.id)
        presigned = self._presign(batch, devices)
        with self.db.tx() as c:
            now_r = repo.get_rollout(c, r.id)
            if now_r is None or now_r.state != RUNNING:  # paused or ended since it was judged
                return
            claimed = repo.claim_members(c, r.id, devices, SHADOWING, PROMOTING, now)
            seqs = repo.assign_sequences(c, claimed)
            failed = [(d, FAILED, SEQUENCE_EXHAUSTED) for d in claimed if d not in seqs]
            payloads, sent = [], []
            for d in claimed:
                seq = seqs.get(d)
                if seq is None:
                    continue
                pre = presigned.get(d)
                payloads.append((d, pre[1] if pre is not None and pre[0] == seq else batch.sign(d, seq), seq))
                sent.append((d, seq))
            repo.set_member_states(c, r.id, failed, now)
            repo.mark_promoted(c, r.id, sent, now)
            self.publisher.store(c, payloads)
        if sent:
            log.info("rollout %s: %d devices promoted from shadow", r.id, len(sent))

    def _dispatch(
        self, c: Conn, r: RolloutRow, wave: int, batch: ManifestBatch, presigned: Presigned, now: float
    ) -> bool:
        """Inside the transaction: claim `wave`, assign sequences in one statement, refuse who
        cannot be sent, record and queue the manifests. False if the rollout moved meanwhile."""
        if not repo.move_wave(c, r.id, r.wave, wave, RUNNING, now):
            return False
        members = repo.members_in_wave(c, r.id, wave, PENDING)
        refused = [(m.device, REFUSED, INVALID_DEVICE_ID) for m in members if not topics.valid_name(m.device)]
        valid = [m for m in members if topics.valid_name(m.device)]
        seqs = repo.assign_sequences(c, [m.device for m in valid])
        refused += [(m.device, REFUSED, SEQUENCE_EXHAUSTED) for m in valid if m.device not in seqs]
        for device, _s, why in refused:
            log.warning("rollout %s: device %s refused: %s", r.id, repr(device)[:80], why)
        repo.set_member_states(c, r.id, refused, now)
        sent, payloads = [], []
        for m in valid:
            seq = seqs.get(m.device)
            if seq is None:
                continue
            pre = presigned.get(m.device)
            payload = pre[1] if pre is not None and pre[0] == seq else batch.sign(m.device, seq)
            sent.append((m.device, seq, m.active_model, m.active_version))
            payloads.append((m.device, payload, seq))
        repo.mark_sent(c, r.id, sent, SENT, now)
        self.publisher.store(c, payloads)
        log.info("rollout %s: wave %d dispatched (%d devices)", r.id, wave + 1, len(sent))
        return True

    def _abort(
        self,
        r: RolloutRow,
        reason: str,
        now: float,
        end_state: str = ABORTED,
        expect: tuple[str, ...] = OPEN,
        only: tuple[str, ...] | None = None,
    ) -> bool:
        """End `r` as aborted (or `end_state`) and send every device that got its manifest (and
        is in one of the `only` states, when given) a rollback (a new, higher sequence for the
        version it ran before), or clear its desired state."""
        releases: dict[tuple[str, str], ManifestBatch | None] = {}

        def rollback_to(s: repo.Sent) -> ManifestBatch | None:
            key = (s.prev_model or "", s.prev_version or "")
            if not s.prev_model or key == (r.model, r.version):
                return None
            if key not in releases:
                try:
                    releases[key] = self.publisher.batch(self.registry.version(*key), r.id)
                except NotFoundError:
                    releases[key] = None
            return releases[key]

        with self.db.lock:
            before = repo.sent_members(self.db.conn, r.id, only)
        presigned: Presigned = {}
        for s in before:
            b = rollback_to(s)
            seq = next_sequence(s.issued, s.reported)
            if b is not None and seq is not None and dispatch_refusal(s.device, seq) is None:
                presigned[s.device] = (seq, b.sign(s.device, seq))
        with self.db.tx() as c:
            if not repo.change_state(c, r.id, end_state, now, expect, reason=reason, ended=True):
                return False
            repo.replace_state(c, r.id, (PENDING,), SKIPPED, now)
            states: list[tuple[str, str, str | None]] = []
            rolling: list[repo.Sent] = []
            clears: list[str] = []
            for s in repo.sent_members(c, r.id, only):  # again: a wave may have gone out meanwhile
                if not topics.valid_name(s.device):  # sent by a version that stored any id
                    states.append((s.device, ROLLBACK_FAILED, INVALID_DEVICE_ID))
                elif rollback_to(s) is None:
                    clears.append(s.device)
                    states.append((s.device, NO_ROLLBACK, None))
                else:
                    rolling.append(s)
            seqs = repo.assign_sequences(c, [s.device for s in rolling])
            payloads: list[tuple[str, bytes, int | None]] = [(d, b"", None) for d in clears]
            marked = []
            for s in rolling:
                seq = seqs.get(s.device)
                if seq is None:
                    states.append((s.device, ROLLBACK_FAILED, SEQUENCE_EXHAUSTED))
                    continue
                pre = presigned.get(s.device)
                b = rollback_to(s)
                assert b is not None
                payloads.append((s.device, pre[1] if pre and pre[0] == seq else b.sign(s.device, seq), seq))
                marked.append((s.device, seq))
            repo.set_member_states(c, r.id, states, now)
            repo.mark_rolling_back(c, r.id, marked, ROLLING_BACK, now)
            self.publisher.store(c, payloads)
        log.warning("rollout %s %s: %s", r.id, end_state, reason)
        return True

    def _end(self, r: RolloutRow, state: str, reason: str, now: float, expect: tuple[str, ...]) -> bool:
        with self.db.tx() as c:
            if not repo.change_state(c, r.id, state, now, expect, reason=reason, ended=True):
                return False
            repo.replace_state(c, r.id, (PENDING,), SKIPPED, now)
        log.info("rollout %s %s: %s", r.id, state, reason)
        return True

    # ---- reporting -------------------------------------------------------------------------
    def status(self, rid: str) -> dict[str, Any]:
        with self.db.lock:
            r = self._get(self.db.conn, rid)
            counts = repo.state_counts(self.db.conn, rid)  # one snapshot: no tx is open under the lock
            health = repo.member_health(self.db.conn, r) if r.gates else []
            baseline = fleet_baseline(repo.fleet_p95(self.db.conn, r.model)) if r.gates else {}
            drift = [
                rollout_drift_psi(self.db.conn, r.id, r.model, r.version, wave=i) if _drift_gated(r) else None
                for i in range(len(r.waves))
            ]
            shadow = (
                repo.shadow_summary(self.db.conn, rid, SHADOWING, (PROMOTING, ACTIVE)) if r.shadow else {}
            )
        per_wave = [
            {"wave": i + 1, "percent": p, "devices": 0, **dict.fromkeys(COUNT_KEYS, 0)}
            for i, p in enumerate(r.waves)
        ]
        for i, w in enumerate(per_wave):
            if r.gates:  # each wave's own devices; the decision judges all dispatched so far
                w["gates"] = metrics([m for m in health if m.wave == i], baseline, drift[i])
            if r.shadow:  # shadowing and promoting are also among "downloading" (waiting)
                shadowing, promoted, worst = shadow.get(i, (0, 0, None))
                w.update(shadowing=shadowing, promoted=promoted, worst_agreement=worst)
        for wave, state, n in counts:
            w = per_wave[wave]
            w["devices"] += n
            w[_count_bucket(state)] += n
        totals = {k: sum(w[k] for w in per_wave) for k in ("devices", *COUNT_KEYS)}
        return {
            "id": r.id,
            "model": r.model,
            "version": r.version,
            "state": r.state,
            "reason": r.reason,
            "selector": r.selector,
            "waves": per_wave,
            "current_wave": r.wave + 1,
            "totals": totals,
            "success_threshold": r.success_threshold,
            "max_failure_rate": r.max_failure_rate,
            "device_timeout": r.device_timeout,
            "gates": [str(g) for g in r.gates],
            "bake": r.bake,
            "on_breach": r.on_breach,
            "bake_started": r.bake_started,
            "shadow": r.shadow,
            "promote": [str(g) for g in r.promote],
            "min_shadow_requests": r.min_shadow_requests,
            "created": r.created,
            "ended": r.ended,
        }

    def list(self) -> list[dict[str, Any]]:
        with self.db.lock:
            ids = repo.rollout_ids(self.db.conn)
        return [self.status(rid) for rid in ids]

    def device_states(self, rid: str) -> dict[str, str]:
        with self.db.lock:
            return repo.member_states(self.db.conn, rid)
