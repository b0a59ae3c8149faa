"""What a rollout does next, decided from its counts alone: no database, no clock, no I/O.

The rollout engine (fleet.rollouts) reads a `Rollout` and its `Counts`, calls `decide`, and
carries out the answer; every rule of the staged rollout lives here, testable with a table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgekit.protocol import IN_PROGRESS
from fleet.gates import ABORT, PAUSE, Gate, first_breach

RUNNING, PAUSED = "running", "paused"


@dataclass(frozen=True)
class Rollout:
    id: str
    state: str  # running | paused (an ended rollout is never decided on)
    wave: int  # index of the last dispatched wave, -1 before the first
    waves: tuple[float, ...]  # cumulative percentages
    success_threshold: float
    max_failure_rate: float
    paused_at: float | None = None
    max_pause: float = 7 * 86400
    gates: tuple[Gate, ...] = ()
    bake: float = 0.0  # seconds a wave must stay healthy before the next one (or completion)
    on_breach: str = ABORT  # pause | abort
    bake_started: float | None = None  # when the current wave met its success rule

    @property
    def last_wave(self) -> int:
        return len(self.waves) - 1


@dataclass(frozen=True)
class Counts:
    """Devices of the waves dispatched so far, by outcome. `dispatched` excludes refused devices
    (never sent a manifest: neither a success nor a failure)."""

    dispatched: int = 0
    active: int = 0
    failed: int = 0
    timed_out: int = 0
    waiting: int = 0  # sent, or reported an in-progress state
    refused: int = 0


@dataclass(frozen=True)
class Advance:
    """Dispatch the next wave that has devices."""


@dataclass(frozen=True)
class StartBake:
    """The current wave met its success rule: its bake time starts now."""


@dataclass(frozen=True)
class Pause:
    reason: str


@dataclass(frozen=True)
class Complete:
    reason: str


@dataclass(frozen=True)
class Abort:
    reason: str


@dataclass(frozen=True)
class Cancel:
    reason: str


Decision = Advance | StartBake | Pause | Complete | Abort | Cancel


def decide(
    rollout: Rollout,
    counts: Counts,
    now: float,
    health: Mapping[str, float | None] | None = None,
    shadow_breach: str | None = None,
) -> Decision | None:
    """The next step of an open rollout, or None to wait. `health` holds the gate metrics
    (fleet.gates.metrics) of the devices dispatched so far; a gate is judged at any time while
    running, and a wave with gates or a bake time advances only `bake` seconds after it met
    its success rule. `shadow_breach` is a shadow rollout's failed promotion rule
    (fleet.shadow.judge): it always aborts, whatever `on_breach` says, so a shadow that
    disagrees is never promoted anywhere."""
    r, n = rollout, counts
    if r.state == PAUSED and now - (r.paused_at if r.paused_at is not None else now) > r.max_pause:
        return Cancel("paused too long")
    if n.dispatched == 0:
        # Every device dispatched so far was refused: try the next wave, or end (every rollout
        # ends, even one no device could be offered).
        if n.refused and r.state == RUNNING:
            if r.wave < r.last_wave:
                return Advance()
            return Abort(f"no device could be offered the update ({n.refused} refused)")
        return None
    failed = n.failed + n.timed_out
    if failed / n.dispatched > r.max_failure_rate:  # at any wave, paused or not
        return Abort(f"failure rate {failed}/{n.dispatched} above {r.max_failure_rate:.0%}")
    if r.state == PAUSED:
        return None
    if shadow_breach:
        return Abort(shadow_breach)
    breach = first_breach(r.gates, health or {})
    if breach:
        return Pause(breach) if r.on_breach == PAUSE else Abort(breach)
    if n.active / n.dispatched >= r.success_threshold:
        if r.wave == r.last_wave and n.waiting:
            return None
        if r.gates or r.bake > 0:
            if r.bake_started is None:
                return StartBake()
            if now - r.bake_started < r.bake:
                return None
        if r.wave < r.last_wave:
            return Advance()
        refused = f", {n.refused} refused" if n.refused else ""
        return Complete(f"{n.active}/{n.dispatched} active{refused}")
    if n.waiting == 0:
        where = "" if r.wave == r.last_wave else f" in wave {r.wave + 1}"
        return Abort(f"success {n.active}/{n.dispatched} below {r.success_threshold:.0%}{where}")
    return None


def shadow_member_state(current: str, reported: str) -> str | None:
    """A shadow rollout member's next state from a status of its current manifest (the shadow
    manifest, or once promoting the active one), or None to stay. An agent that activates a
    shadow manifest (one that predates shadows ignores the mode) has failed: counted as a
    failure, it is rolled back with the rest when the failure rate aborts."""
    if reported in ("failed", "rolled_back"):
        return "failed"
    if current == "promoting":
        return "active" if reported == "active" else None
    if reported == "active":
        return "failed"
    if current == "shadow":
        return None
    if reported == "shadow" or reported in IN_PROGRESS:
        return reported
    return None


def timeout_cutoff(now: float, device_timeout: float) -> float:
    """A device sent its manifest before this instant and still waiting has timed out."""
    return now - device_timeout
