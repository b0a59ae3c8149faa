"""Which versions a device may report as active: the ones the fleet offered it.

A device's `active` report is what operators and the rollout engine believe it runs, so a
version the server never sent it (a buggy or hostile agent, a forged report) must not become
its recorded state. Offered means a manifest was issued for it: a rollout dispatched that
version to the device, or an abort sent it as the rollback target. The one exception is the
enrolment baseline: a device the fleet has never offered anything and that has no recorded
active version may report what it came with (first contact, trust on first use); from then on
only offers count. Re-reporting the version already recorded (a heartbeat) is always accepted.

The rollout tables already record every manifest sent (rollout_devices.sequence for the
rollout's version, rollback_sequence for prev_model/prev_version), so they are the record of
offers; no second table can drift from them.
"""

from __future__ import annotations

from fleet.dialect import Conn

NOT_OFFERED = "not_offered"

Version = tuple[str, str | None]


def active_refusal(
    reported: Version, recorded: Version | None, offered: bool, ever_offered: bool
) -> str | None:
    """The decision, pure: None when the active report may be stored, else the refusal reason."""
    if offered or reported == recorded:
        return None
    if recorded is None and not ever_offered:
        return None  # the enrolment baseline
    return NOT_OFFERED


def check_active(c: Conn, device: str, model: str, version: str | None) -> str | None:
    """`active_refusal` for one report, reading the device's offers inside the caller's tx
    (one statement: it runs for every `active` report)."""
    same = c.dialect.is_same
    row = c.execute(
        "SELECT d.active_model, d.active_version,"
        " EXISTS (SELECT 1 FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout WHERE rd.device=d.id"
        f"  AND ((rd.sequence IS NOT NULL AND r.model=? AND r.version {same} ?)"
        f"  OR (rd.rollback_sequence IS NOT NULL AND rd.prev_model=? AND rd.prev_version {same} ?))),"
        " EXISTS (SELECT 1 FROM rollout_devices WHERE device=d.id AND sequence IS NOT NULL)"
        " FROM devices d WHERE d.id=?",
        (model, version, model, version, device),
    ).fetchone()
    if row is None:  # a device's first message: nothing recorded, nothing offered
        return active_refusal((model, version), None, False, False)
    recorded = (row[0], row[1]) if row[0] else None
    return active_refusal((model, version), recorded, bool(row[2]), bool(row[3]))
