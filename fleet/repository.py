"""The SQL of the rollout engine, the desired-state shadow and the outbox, in one place.

Each function runs on the connection of the caller's transaction (fleet.db: `tx()`), so a
state change and the messages it causes commit together. Statements are set-based (one
statement per wave, not one per device) and portable: `ON CONFLICT`, `RETURNING` and subqueries
read the same in SQLite >= 3.35 and PostgreSQL, and the few spellings that differ (a list
parameter, the larger of two values, a label match, NULL-safe equality) come from `c.dialect`
(fleet.dialect).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edgekit.protocol import MAX_SEQUENCE
from fleet import decide
from fleet.dialect import Conn, Row
from fleet.gates import ABORT, Gate, MemberHealth, parse_gates
from fleet.shadow import Stats, parse_rule


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


@dataclass(frozen=True)
class RolloutRow:
    id: str
    model: str
    version: str
    selector: dict[str, str]
    waves: tuple[float, ...]
    success_threshold: float
    max_failure_rate: float
    device_timeout: float
    state: str
    wave: int
    reason: str | None
    created: float
    paused_at: float | None
    ended: float | None
    gates: tuple[Gate, ...] = ()
    bake: float = 0.0
    on_breach: str = ABORT
    bake_started: float | None = None
    shadow: bool = False  # waves send shadow manifests; devices are promoted by `promote`
    promote: tuple[Gate, ...] = ()  # fleet.shadow's promotion rule
    min_shadow_requests: int = 0

    def view(self, max_pause: float) -> decide.Rollout:
        """What fleet.decide needs of it."""
        return decide.Rollout(
            self.id,
            self.state,
            self.wave,
            self.waves,
            self.success_threshold,
            self.max_failure_rate,
            self.paused_at,
            max_pause,
            self.gates,
            self.bake,
            self.on_breach,
            self.bake_started,
        )


@dataclass(frozen=True)
class Member:
    """A device of a rollout with what dispatching it needs."""

    device: str
    issued: int  # highest sequence the fleet ever sent it
    reported: int | None  # last sequence it reported
    active_model: str | None
    active_version: str | None


@dataclass(frozen=True)
class Sent:
    """A device that was sent the rollout's manifest, with what it ran before (the rollback)."""

    device: str
    prev_model: str | None
    prev_version: str | None
    issued: int
    reported: int | None


def _rollout(r: Row) -> RolloutRow:
    return RolloutRow(
        r["id"],
        r["model"],
        r["version"],
        json.loads(r["selector"]),
        tuple(json.loads(r["waves"])),
        r["success_threshold"],
        r["max_failure_rate"],
        r["device_timeout"],
        r["state"],
        r["wave"],
        r["reason"],
        r["created"],
        r["paused_at"],
        r["ended"],
        parse_gates(json.loads(r["gates"])),
        r["bake"],
        r["on_breach"],
        r["bake_started"],
        bool(r["shadow"]),
        parse_rule(json.loads(r["promote"])),
        r["min_shadow_requests"],
    )


# ---- devices -------------------------------------------------------------------------------
def select_devices(c: Conn, selector: dict[str, str], ids: list[str] | None = None) -> list[str]:
    """Ids of the devices whose labels match every `selector` pair (and are in `ids`, if given)."""
    where, args = [], []
    for k, v in selector.items():
        where.append(c.dialect.label_match)
        args += [k, v]
    if ids is not None:
        where.append(f"d.id {c.dialect.in_list}")
        args.append(c.dialect.list_param(ids))
    sql = "SELECT d.id FROM devices d" + (" WHERE " + " AND ".join(where) if where else "")
    return [r[0] for r in c.execute(sql + " ORDER BY d.id", args)]


def assign_sequences(c: Conn, devices: Iterable[str]) -> dict[str, int]:
    """Give each device its next manifest sequence, atomically, in one statement: above all it
    was sent and all it reported. A device whose next sequence would pass MAX_SEQUENCE is left
    out (the comparison is made before adding, so nothing ever overflows)."""
    d = c.dialect
    ids = sorted(set(devices))
    # Lock the rows in one order first: two replicas updating overlapping device sets would
    # otherwise lock them in whatever order each UPDATE visits them, and deadlock (PostgreSQL).
    if d.for_update:
        c.execute(
            f"SELECT id FROM devices WHERE id {d.in_list} ORDER BY id{d.for_update}", (d.list_param(ids),)
        )
    rows = c.execute(
        f"UPDATE devices SET issued_sequence = {d.greatest}(issued_sequence, COALESCE(sequence, 0)) + 1"
        f" WHERE id {d.in_list} AND {d.greatest}(issued_sequence, COALESCE(sequence, 0)) < ?"
        " RETURNING id, issued_sequence",
        (d.list_param(ids), MAX_SEQUENCE),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def sequence_snapshot(c: Conn, devices: Iterable[str]) -> dict[str, tuple[int, int | None]]:
    """(issued, reported) per device, to predict the sequences `assign_sequences` will give."""
    rows = c.execute(
        f"SELECT id, issued_sequence, sequence FROM devices WHERE id {c.dialect.in_list}",
        (c.dialect.list_param(devices),),
    )
    return {r[0]: (r[1], r[2]) for r in rows}


# ---- rollouts --------------------------------------------------------------------------------
def get_rollout(c: Conn, rid: str) -> RolloutRow | None:
    row = c.execute("SELECT * FROM rollouts WHERE id=?", (rid,)).fetchone()
    return _rollout(row) if row else None


def open_rollouts(c: Conn, states: Sequence[str]) -> list[RolloutRow]:
    rows = c.execute(f"SELECT * FROM rollouts WHERE state IN ({_marks(states)}) ORDER BY created", states)
    return [_rollout(r) for r in rows]


def rollout_ids(c: Conn) -> list[str]:
    return [r[0] for r in c.execute("SELECT id FROM rollouts ORDER BY created")]


def insert_rollout(c: Conn, r: RolloutRow, now: float) -> None:
    c.execute(
        "INSERT INTO rollouts (id, model, version, selector, waves, success_threshold,"
        " max_failure_rate, device_timeout, state, wave, created, updated, gates, bake, on_breach,"
        " shadow, promote, min_shadow_requests) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            r.id,
            r.model,
            r.version,
            json.dumps(r.selector),
            json.dumps(list(r.waves)),
            r.success_threshold,
            r.max_failure_rate,
            r.device_timeout,
            r.state,
            r.wave,
            now,
            now,
            json.dumps([str(g) for g in r.gates]),
            r.bake,
            r.on_breach,
            int(r.shadow),  # an INTEGER column on both backends (PostgreSQL refuses a boolean)
            json.dumps([str(g) for g in r.promote]),
            r.min_shadow_requests,
        ),
    )


def insert_members(c: Conn, rid: str, members: Iterable[tuple[str, int, int]], state: str) -> None:
    """(device, wave, position) rows of a new rollout."""
    c.executemany(
        "INSERT INTO rollout_devices (rollout, device, wave, position, state) VALUES (?,?,?,?,?)",
        ((rid, d, w, p, state) for d, w, p in members),
    )


def clashes(c: Conn, rid: str, open_states: Sequence[str]) -> list[str]:
    """Other open rollouts sharing a device with `rid` (one join on the device index)."""
    rows = c.execute(
        "SELECT DISTINCT r.id FROM rollout_devices mine"
        " JOIN rollout_devices rd ON rd.device = mine.device AND rd.rollout <> mine.rollout"
        f" JOIN rollouts r ON r.id = rd.rollout WHERE mine.rollout=? AND r.state IN ({_marks(open_states)})"
        " ORDER BY r.id",
        (rid, *open_states),
    )
    return [r[0] for r in rows]


def change_state(
    c: Conn,
    rid: str,
    state: str,
    now: float,
    expect: Sequence[str],
    reason: str | None = None,
    paused_at: float | None = None,
    ended: bool = False,
) -> bool:
    """Compare-and-set: move `rid` to `state` only if it is in one of `expect`."""
    cur = c.execute(
        "UPDATE rollouts SET state=?, paused_at=?, reason=COALESCE(?, reason),"
        f" ended=CASE WHEN ? THEN ? ELSE ended END, updated=? WHERE id=? AND state IN ({_marks(expect)})",
        (state, paused_at, reason, ended, now, now, rid, *expect),
    )
    return cur.rowcount == 1


def move_wave(c: Conn, rid: str, from_wave: int, to_wave: int, state: str, now: float) -> bool:
    """Compare-and-set of the dispatched wave: two dispatchers never send one wave twice. The
    new wave has not baked yet."""
    cur = c.execute(
        "UPDATE rollouts SET wave=?, bake_started=NULL, updated=? WHERE id=? AND wave=? AND state=?",
        (to_wave, now, rid, from_wave, state),
    )
    return cur.rowcount == 1


def start_bake(c: Conn, rid: str, wave: int, state: str, now: float) -> bool:
    """Compare-and-set: wave `wave` of `rid` starts baking now (once)."""
    cur = c.execute(
        "UPDATE rollouts SET bake_started=?, updated=? WHERE id=? AND wave=? AND state=? AND bake_started IS NULL",
        (now, now, rid, wave, state),
    )
    return cur.rowcount == 1


def reset_bake(c: Conn, rid: str) -> None:
    """The current wave bakes again from the start (after an operator's resume)."""
    c.execute("UPDATE rollouts SET bake_started=NULL WHERE id=?", (rid,))


def member_health(c: Conn, r: RolloutRow, max_wave: int | None = None) -> list[MemberHealth]:
    """Every member of `r` sent its manifest, with its latest health report of `r`'s version
    made after that (older ones describe an earlier install) and its own last report of the
    version it ran before."""
    sql = (
        "SELECT rd.wave, rd.state, rd.reason, rd.prev_version, h.requests, h.errors, h.fallbacks,"
        " h.p95_ms, p.p95_ms, p.updated > rd.sent_at FROM rollout_devices rd"
        " LEFT JOIN device_health h ON h.device = rd.device AND h.model=? AND h.version=?"
        " AND h.updated >= rd.sent_at"
        " LEFT JOIN device_health p ON p.device = rd.device AND p.model = rd.prev_model"
        " AND p.version = rd.prev_version"
        " WHERE rd.rollout=? AND rd.sequence IS NOT NULL"
    )
    args: list[Any] = [r.model, r.version, r.id]
    if max_wave is not None:
        sql += " AND rd.wave<=?"
        args.append(max_wave)
    return [
        MemberHealth(w, s, why, pv, rq or 0, er or 0, fb or 0, p95, prev, bool(late))
        for w, s, why, pv, rq, er, fb, p95, prev, late in c.execute(sql, args)
    ]


def fleet_p95(c: Conn, model: str) -> list[tuple[str, float]]:
    """(version, p95_ms) of every device's report of the version of `model` it runs now."""
    rows = c.execute(
        "SELECT h.version, h.p95_ms FROM device_health h JOIN devices d ON d.id = h.device"
        " AND d.active_model = h.model AND d.active_version = h.version"
        " WHERE h.model=? AND h.p95_ms IS NOT NULL",
        (model,),
    )
    return [(r[0], r[1]) for r in rows]


def next_pending_wave(c: Conn, rid: str, after: int, pending: str) -> int | None:
    row = c.execute(
        "SELECT MIN(wave) FROM rollout_devices WHERE rollout=? AND wave>? AND state=?", (rid, after, pending)
    ).fetchone()
    return row[0]


def members_in_wave(c: Conn, rid: str, wave: int, state: str) -> list[Member]:
    rows = c.execute(
        "SELECT rd.device, d.issued_sequence, d.sequence, d.active_model, d.active_version"
        " FROM rollout_devices rd JOIN devices d ON d.id = rd.device"
        " WHERE rd.rollout=? AND rd.wave=? AND rd.state=? ORDER BY rd.position",
        (rid, wave, state),
    )
    return [Member(*r) for r in rows]


def sent_members(c: Conn, rid: str, states: Sequence[str] | None = None) -> list[Sent]:
    """Members of `rid` that were sent its manifest (those in `states`, when given)."""
    where, args = "", [rid]
    if states is not None:
        where, args = f" AND rd.state IN ({_marks(states)})", [rid, *states]
    rows = c.execute(
        "SELECT rd.device, rd.prev_model, rd.prev_version, d.issued_sequence, d.sequence"
        " FROM rollout_devices rd JOIN devices d ON d.id = rd.device"
        f" WHERE rd.rollout=? AND rd.sequence IS NOT NULL{where} ORDER BY rd.position",
        args,
    )
    return [Sent(*r) for r in rows]


def mark_sent(
    c: Conn, rid: str, sent: Iterable[tuple[str, int, str | None, str | None]], state: str, now: float
) -> None:
    """(device, sequence, prev_model, prev_version) rows that were just sent the manifest."""
    c.executemany(
        "UPDATE rollout_devices SET state=?, sequence=?, prev_model=?, prev_version=?, sent_at=?, updated=?"
        " WHERE rollout=? AND device=?",
        ((state, seq, pm, pv, now, now, rid, d) for d, seq, pm, pv in sent),
    )


def mark_rolling_back(c: Conn, rid: str, sent: Iterable[tuple[str, int]], state: str, now: float) -> None:
    c.executemany(
        "UPDATE rollout_devices SET state=?, rollback_sequence=?, updated=? WHERE rollout=? AND device=?",
        ((state, seq, now, rid, d) for d, seq in sent),
    )


def set_member_states(c: Conn, rid: str, rows: Iterable[tuple[str, str, str | None]], now: float) -> None:
    """(device, state, reason) rows; a None reason keeps the stored one."""
    c.executemany(
        "UPDATE rollout_devices SET state=?, reason=COALESCE(?, reason), updated=? WHERE rollout=? AND device=?",
        ((s, why, now, rid, d) for d, s, why in rows),
    )


def replace_state(c: Conn, rid: str, old: Sequence[str], new: str, now: float, **where: Any) -> int:
    """Every member of `rid` in one of `old` states moves to `new` (optionally: sent before
    `sent_before`, with a reason)."""
    extra, args = "", []
    if "sent_before" in where:
        extra, args = " AND sent_at < ?", [where["sent_before"]]
    cur = c.execute(
        "UPDATE rollout_devices SET state=?, updated=?, reason=COALESCE(?, reason)"
        f" WHERE rollout=? AND state IN ({_marks(old)}){extra}",
        (new, now, where.get("reason"), rid, *old, *args),
    )
    return cur.rowcount


def state_counts(c: Conn, rid: str, max_wave: int | None = None) -> list[tuple[int, str, int]]:
    """(wave, state, devices) of `rid`, up to `max_wave` when given."""
    sql = "SELECT wave, state, COUNT(*) FROM rollout_devices WHERE rollout=?"
    args: list[Any] = [rid]
    if max_wave is not None:
        sql += " AND wave<=?"
        args.append(max_wave)
    return [(r[0], r[1], r[2]) for r in c.execute(sql + " GROUP BY wave, state", args)]


def member_states(c: Conn, rid: str) -> dict[str, str]:
    return {
        r[0]: r[1] for r in c.execute("SELECT device, state FROM rollout_devices WHERE rollout=?", (rid,))
    }


def members_for_status(c: Conn, device: str, sequence: int | None, rollout: str | None) -> list[Row]:
    """The memberships a status report is about: by the sequence it reports (the manifest or the
    rollback), or by rollout id when it reports none; with whether that rollout is a shadow one."""
    sql = (
        "SELECT rd.rollout, rd.device, rd.state, rd.rollback_sequence, r.shadow FROM rollout_devices rd"
        " JOIN rollouts r ON r.id = rd.rollout WHERE rd.device=?"
    )
    if sequence is None:
        return c.execute(sql + " AND rd.rollout=?", (device, rollout)).fetchall()
    return c.execute(
        sql + " AND (rd.sequence=? OR rd.rollback_sequence=?)", (device, sequence, sequence)
    ).fetchall()


# ---- shadow canary ---------------------------------------------------------------------------
SHADOW_COLUMNS = "shadow_requests, top1_agreement, cosine_mean, max_abs, latency_ratio"


def record_shadow_stats(
    c: Conn,
    device: str,
    stats: Iterable[tuple[str, str, Stats]],
    member_state: str,
    open_states: Sequence[str],
    now: float,
) -> None:
    """(model, version, stats) a device reports: kept on its membership of the open shadow
    rollout of that version while it is shadowing it (later reports, after promotion or a
    rollback, leave the evidence it was judged by as it was)."""
    c.executemany(
        "UPDATE rollout_devices SET shadow_requests=?, top1_agreement=?, cosine_mean=?, max_abs=?,"
        " latency_ratio=?, shadow_updated=? WHERE device=? AND state=? AND rollout IN"
        " (SELECT id FROM rollouts WHERE model=? AND version=? AND shadow=1"
        f" AND state IN ({_marks(open_states)}))",
        (
            (
                s.requests,
                s.top1_agreement,
                s.cosine_mean,
                s.max_abs,
                s.latency_ratio,
                now,
                device,
                member_state,
                model,
                version,
                *open_states,
            )
            for model, version, s in stats
        ),
    )


def shadow_stats(c: Conn, rid: str, state: str) -> list[tuple[str, Stats | None]]:
    """(device, its latest stats or None) of every member of `rid` in `state`, in wave order."""
    rows = c.execute(
        f"SELECT device, shadow_updated, {SHADOW_COLUMNS} FROM rollout_devices"
        " WHERE rollout=? AND state=? ORDER BY position",
        (rid, state),
    )
    return [(r[0], None if r[1] is None else Stats(r[2] or 0, r[3], r[4], r[5], r[6])) for r in rows]


def claim_members(c: Conn, rid: str, devices: Sequence[str], old: str, new: str, now: float) -> list[str]:
    """Compare-and-set per member: those of `devices` still in `old` move to `new`; returns them."""
    rows = c.execute(
        f"UPDATE rollout_devices SET state=?, updated=? WHERE rollout=? AND state=? AND device {c.dialect.in_list}"
        " RETURNING device",
        (new, now, rid, old, c.dialect.list_param(devices)),
    ).fetchall()
    return sorted(r[0] for r in rows)


def mark_promoted(c: Conn, rid: str, sent: Iterable[tuple[str, int]], now: float) -> None:
    """(device, sequence) of the active manifests just queued: the member's manifest is now that
    one (its `active` report matches it; timeouts and health reports count from now)."""
    c.executemany(
        "UPDATE rollout_devices SET sequence=?, sent_at=?, updated=? WHERE rollout=? AND device=?",
        ((seq, now, now, rid, d) for d, seq in sent),
    )


def shadow_summary(
    c: Conn, rid: str, shadowing: str, promoted: Sequence[str]
) -> dict[int, tuple[int, int, float | None]]:
    """Per wave: (members shadowing, members promoted, the lowest top-1 agreement reported)."""
    rows = c.execute(
        "SELECT wave, SUM(CASE WHEN state=? THEN 1 ELSE 0 END),"
        f" SUM(CASE WHEN state IN ({_marks(promoted)}) THEN 1 ELSE 0 END), MIN(top1_agreement)"
        " FROM rollout_devices WHERE rollout=? GROUP BY wave",
        (shadowing, *promoted, rid),
    )
    return {r[0]: (int(r[1] or 0), int(r[2] or 0), r[3]) for r in rows}


# ---- desired-state shadow and outbox ------------------------------------------------------
def put_desired(c: Conn, rows: Iterable[tuple[str, bytes, int | None]], now: float) -> None:
    """(device, payload, sequence): what each device's `desired` topic now holds."""
    c.executemany(
        "INSERT INTO desired (device, payload, sequence, updated) VALUES (?,?,?,?)"
        " ON CONFLICT (device) DO UPDATE SET payload=excluded.payload,"
        " sequence=excluded.sequence, updated=excluded.updated",
        ((d, bytes(p), s, now) for d, p, s in rows),
    )


def all_desired(c: Conn) -> list[tuple[str, bytes]]:
    return [(r[0], bytes(r[1])) for r in c.execute("SELECT device, payload FROM desired ORDER BY device")]


def get_desired(c: Conn, device: str) -> bytes | None:
    row = c.execute("SELECT payload FROM desired WHERE device=?", (device,)).fetchone()
    return bytes(row[0]) if row else None


def outbox_add(c: Conn, rows: Iterable[tuple[str, bytes, bool]], now: float) -> None:
    """(topic, payload, retain) messages to publish once the caller's transaction commits."""
    c.executemany(
        "INSERT INTO outbox (topic, payload, retain, created) VALUES (?,?,?,?)",
        ((t, bytes(p), int(r), now) for t, p, r in rows),
    )


def outbox_pending(c: Conn, after: int, limit: int) -> list[tuple[int, str, bytes, bool]]:
    """Unsent rows with an id above `after`, oldest first."""
    rows = c.execute(
        "SELECT id, topic, payload, retain FROM outbox WHERE sent IS NULL AND id > ? ORDER BY id LIMIT ?",
        (after, limit),
    )
    return [(r[0], r[1], bytes(r[2]), bool(r[3])) for r in rows]


def outbox_mark_sent(c: Conn, ids: Iterable[int], now: float) -> None:
    c.execute(f"UPDATE outbox SET sent=? WHERE id {c.dialect.in_list}", (now, c.dialect.list_param(ids)))


def outbox_prune(c: Conn, sent_before: float) -> None:
    c.execute("DELETE FROM outbox WHERE sent IS NOT NULL AND sent < ?", (sent_before,))


def outbox_count(c: Conn, pending: bool = True) -> int:
    cond = "sent IS NULL" if pending else "sent IS NOT NULL"
    return int(c.execute(f"SELECT COUNT(*) FROM outbox WHERE {cond}").fetchone()[0])


# ---- leases and admin tokens (shared by every replica of one database) ---------------------
def lease_claim(c: Conn, name: str, holder: str, ttl: float) -> bool:
    """Take or renew lease `name` for `ttl` seconds on the database's clock: granted when it is
    free, expired, or already `holder`'s. One statement, so two claimants never both win."""
    now = c.dialect.epoch_now
    row = c.execute(
        f"INSERT INTO leases (name, holder, expires) VALUES (?, ?, {now} + ?)"
        " ON CONFLICT (name) DO UPDATE SET holder=excluded.holder, expires=excluded.expires"
        f" WHERE leases.holder=excluded.holder OR leases.expires < {now} RETURNING holder",
        (name, holder, ttl),
    ).fetchone()
    return row is not None


def lease_release(c: Conn, name: str, holder: str) -> None:
    c.execute("DELETE FROM leases WHERE name=? AND holder=?", (name, holder))


def lease_holder(c: Conn, name: str) -> tuple[str, float] | None:
    """(holder, seconds left) of an unexpired lease, or None."""
    now = c.dialect.epoch_now
    row = c.execute(
        f"SELECT holder, expires - {now} FROM leases WHERE name=? AND expires >= {now}", (name,)
    ).fetchone()
    return (row[0], float(row[1])) if row else None


def token_put(c: Conn, name: str, digest: str, now: float) -> None:
    """The token named `name` is now the one hashing to `digest` (the previous one stops working)."""
    c.execute("DELETE FROM admin_tokens WHERE name=?", (name,))
    c.execute("INSERT INTO admin_tokens (hash, name, created) VALUES (?,?,?)", (digest, name, now))


def token_known(c: Conn, digest: str) -> bool:
    return c.execute("SELECT 1 FROM admin_tokens WHERE hash=?", (digest,)).fetchone() is not None


def token_names(c: Conn) -> list[tuple[str, float]]:
    return [(r[0], r[1]) for r in c.execute("SELECT name, created FROM admin_tokens ORDER BY name")]


def token_delete(c: Conn, name: str) -> bool:
    return c.execute("DELETE FROM admin_tokens WHERE name=?", (name,)).rowcount > 0
