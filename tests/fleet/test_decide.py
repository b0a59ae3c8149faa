"""fleet.decide, the rollout rules as a pure function: one table row per rule, with an injected
clock (`now`) and no database, broker or thread."""

from __future__ import annotations

import dataclasses

import pytest

from fleet.decide import Abort, Advance, Cancel, Complete, Counts, Rollout, decide, timeout_cutoff

NOW = 1_000_000.0
DAY = 86400.0


def rollout(**kw: object) -> Rollout:
    base = Rollout(
        id="r-1",
        state="running",
        wave=0,
        waves=(10.0, 50.0, 100.0),
        success_threshold=0.9,
        max_failure_rate=0.1,
        paused_at=None,
        max_pause=7 * DAY,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


CASES = [
    # --- waiting: nothing decided yet
    ("first wave still downloading", rollout(), Counts(dispatched=10, waiting=10), None),
    ("nothing dispatched yet", rollout(wave=-1), Counts(), None),
    # --- waves
    ("wave succeeded: next wave", rollout(), Counts(dispatched=10, active=9, waiting=1), Advance()),
    ("middle wave succeeded", rollout(wave=1), Counts(dispatched=50, active=45, waiting=5), Advance()),
    ("success exactly at threshold", rollout(), Counts(dispatched=10, active=9, failed=1), Advance()),
    (
        "last wave succeeded, stragglers still waiting",
        rollout(wave=2),
        Counts(dispatched=100, active=95, waiting=5),
        None,
    ),
    ("last wave all done", rollout(wave=2), Counts(dispatched=100, active=100), Complete("100/100 active")),
    (
        "last wave done with tolerated failures",
        rollout(wave=2),
        Counts(dispatched=100, active=92, failed=5, timed_out=3),
        Complete("92/100 active"),
    ),
    # --- failure threshold (timeouts count as failures)
    (
        "failure rate above the limit",
        rollout(),
        Counts(dispatched=10, active=5, failed=2, waiting=3),
        Abort("failure rate 2/10 above 10%"),
    ),
    (
        "timeouts push it over",
        rollout(wave=1),
        Counts(dispatched=50, active=40, failed=2, timed_out=4, waiting=4),
        Abort("failure rate 6/50 above 10%"),
    ),
    ("failure rate exactly at the limit", rollout(), Counts(dispatched=10, failed=1, waiting=9), None),
    # --- success threshold missed once nothing is waiting
    (
        "wave ends below success threshold",
        rollout(max_failure_rate=0.5),
        Counts(dispatched=10, active=7, failed=3),
        Abort("success 7/10 below 90% in wave 1"),
    ),
    (
        "last wave ends below success threshold",
        rollout(wave=2, max_failure_rate=0.5),
        Counts(dispatched=100, active=80, timed_out=20),
        Abort("success 80/100 below 90%"),
    ),
    # --- paused
    (
        "paused: no advance",
        rollout(state="paused", paused_at=NOW - 60),
        Counts(dispatched=10, active=10),
        None,
    ),
    (
        "paused: still aborts on failures",
        rollout(state="paused", paused_at=NOW - 60),
        Counts(dispatched=10, failed=5, active=5),
        Abort("failure rate 5/10 above 10%"),
    ),
    (
        "paused too long: cancelled",
        rollout(state="paused", paused_at=NOW - 7 * DAY - 1),
        Counts(dispatched=10, active=10),
        Cancel("paused too long"),
    ),
    (
        "paused exactly max_pause: not yet",
        rollout(state="paused", paused_at=NOW - 7 * DAY),
        Counts(dispatched=10, active=10),
        None,
    ),
    # --- refused devices (never sent: neither success nor failure)
    (
        "refused do not count against success",
        rollout(wave=2),
        Counts(dispatched=98, active=98, refused=2),
        Complete("98/98 active, 2 refused"),
    ),
    ("every device so far refused: next wave", rollout(), Counts(refused=10), Advance()),
    (
        "every device refused: abort",
        rollout(wave=2),
        Counts(refused=100),
        Abort("no device could be offered the update (100 refused)"),
    ),
    (
        "every device refused while paused: wait",
        rollout(state="paused", paused_at=NOW),
        Counts(refused=10),
        None,
    ),
    # --- one wave only
    (
        "single wave completes",
        rollout(waves=(100.0,)),
        Counts(dispatched=5, active=5),
        Complete("5/5 active"),
    ),
]


@pytest.mark.parametrize(("name", "r", "counts", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decide(name: str, r: Rollout, counts: Counts, expected: object) -> None:
    assert decide(r, counts, NOW) == expected


def test_decide_is_pure_and_deterministic() -> None:
    r, n = rollout(), Counts(dispatched=10, active=9, waiting=1)
    assert decide(r, n, NOW) == decide(r, n, NOW) == Advance()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.wave = 1  # type: ignore[misc]


def test_the_clock_decides_when_a_pause_ends() -> None:
    r = rollout(state="paused", paused_at=NOW, max_pause=3600)
    n = Counts(dispatched=10, active=10)
    assert decide(r, n, NOW + 3600) is None
    assert decide(r, n, NOW + 3601) == Cancel("paused too long")


def test_timeout_cutoff() -> None:
    # A device sent its manifest before now - device_timeout and still waiting has timed out.
    assert timeout_cutoff(NOW, 900) == NOW - 900
