"""The device registry, learned from what devices say on `status` and `online`.

A device is known once it has said anything; its labels are whatever it last reported.
Offline comes from the Last Will on `online` (or an explicit online=false).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from edgekit import topics
from edgekit.protocol import Health, Online, Status, VersionDrift
from fleet import drift
from fleet.db import BaseDatabase
from fleet.dialect import Conn, Row


def _upsert(c: Conn, device: str) -> None:
    # The one place a device row is created: an id the topic layer refuses is never stored
    # (it could never be sent a manifest, and would stop every later start at resync).
    topics.check_name("device id", device)
    c.execute("INSERT INTO devices (id) VALUES (?) ON CONFLICT (id) DO NOTHING", (device,))


def _labels(labels: dict[str, str] | None) -> str | None:
    """The stored form of reported labels; None (keep the stored ones) when none were sent."""
    return json.dumps(labels, sort_keys=True) if labels else None


def record_online(c: Conn, msg: Online, now: float) -> None:
    _upsert(c, msg.device)
    c.execute(
        "UPDATE devices SET labels=COALESCE(?, labels), online=?, last_seen=?,"
        " agent_version=COALESCE(?, agent_version) WHERE id=?",
        (_labels(msg.labels), int(msg.online), now, msg.agent_version, msg.device),
    )


def record_status(c: Conn, msg: Status, now: float) -> None:
    # One statement per report: thousands of reports per second go through here.
    _upsert(c, msg.device)
    active = msg.state == "active" and bool(msg.model)
    c.execute(
        "UPDATE devices SET labels=COALESCE(?, labels), online=1, last_seen=?, state=?, model=?, version=?,"
        " sequence=?, rollout=?, reason=?,"
        " active_model=CASE WHEN ? THEN ? ELSE active_model END,"
        " active_version=CASE WHEN ? THEN ? ELSE active_version END WHERE id=?",
        (
            _labels(msg.labels),
            now,
            msg.state,
            msg.model,
            msg.version,
            msg.sequence,
            msg.rollout,
            msg.reason,
            active,
            msg.model,
            active,
            msg.version,
            msg.device,
        ),
    )
    if msg.health is not None and msg.health.models:
        record_health(c, msg.device, msg.health, now)
    if msg.drift:
        record_drift(c, msg.device, msg.drift, now)


HEALTH_KEEP_S = 30 * 86400  # a version's report older than this is no device's baseline any more


def record_health(c: Conn, device: str, health: Health, now: float) -> None:
    """The latest report per (device, model, version); a version the device no longer serves
    keeps its last report (its latency baseline for the health gates of the next rollout)."""
    c.executemany(
        "INSERT INTO device_health (device, model, version, window_s, requests, errors, fallbacks, p95_ms,"
        " updated) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (device, model, version) DO UPDATE SET"
        " window_s=excluded.window_s, requests=excluded.requests, errors=excluded.errors,"
        " fallbacks=excluded.fallbacks, p95_ms=excluded.p95_ms, updated=excluded.updated",
        (
            (device, h.model, h.version, health.window_s, h.requests, h.errors, h.fallbacks, h.p95_ms, now)
            for h in health.models
        ),
    )
    c.execute("DELETE FROM device_health WHERE device=? AND updated < ?", (device, now - HEALTH_KEEP_S))


def record_drift(c: Conn, device: str, drift: list[VersionDrift], now: float) -> None:
    """The latest drift summary per (device, model, version): cumulative on the device, so the
    newest replaces the rest (fleet.drift scores it)."""
    c.executemany(
        "INSERT INTO device_drift (device, model, version, tensors, updated) VALUES (?,?,?,?,?)"
        " ON CONFLICT (device, model, version) DO UPDATE SET tensors=excluded.tensors,"
        " updated=excluded.updated",
        (
            (
                device,
                v.model,
                v.version,
                json.dumps([asdict(t) for t in v.tensors], separators=(",", ":")),
                now,
            )
            for v in drift
        ),
    )
    c.execute("DELETE FROM device_drift WHERE device=? AND updated < ?", (device, now - HEALTH_KEEP_S))


def drift_baseline(c: Conn, model: str, version: str) -> list[dict[str, Any]]:
    """The release's drift baseline (its provenance `drift`, fleet.registry); [] without one."""
    rows = list(c.execute("SELECT doc FROM provenance WHERE model=? AND version=?", (model, version)))
    return (json.loads(rows[0][0]).get("drift") or []) if rows else []


def drift_reports(c: Conn, model: str, version: str) -> list[tuple[dict[str, str], list[dict[str, Any]]]]:
    """(labels, tensors) of every device's latest drift summary of `version`."""
    rows = c.execute(
        "SELECT d.labels, x.tensors FROM device_drift x JOIN devices d ON d.id = x.device"
        " WHERE x.model=? AND x.version=? ORDER BY x.device",
        (model, version),
    )
    return [(json.loads(labels or "{}"), json.loads(tensors)) for labels, tensors in rows]


def drift_versions(c: Conn, model: str) -> list[str]:
    rows = c.execute("SELECT DISTINCT version FROM device_drift WHERE model=? ORDER BY version", (model,))
    return [r[0] for r in rows]


def rollout_drift(
    c: Conn, rid: str, model: str, version: str, max_wave: int | None = None, wave: int | None = None
) -> list[tuple[dict[str, str], list[dict[str, Any]]]]:
    """(labels, tensors) of the rollout's members (up to `max_wave`, or of `wave`) whose summary
    of `version` was reported after the manifest was sent (an older one is of an earlier install)."""
    sql = (
        "SELECT d.labels, x.tensors FROM rollout_devices rd JOIN devices d ON d.id = rd.device"
        " JOIN device_drift x ON x.device = rd.device AND x.model=? AND x.version=?"
        " AND x.updated >= rd.sent_at WHERE rd.rollout=? AND rd.sequence IS NOT NULL"
    )
    args: list[Any] = [model, version, rid]
    if max_wave is not None:
        sql += " AND rd.wave<=?"
        args.append(max_wave)
    if wave is not None:
        sql += " AND rd.wave=?"
        args.append(wave)
    return [(json.loads(labels or "{}"), json.loads(tensors)) for labels, tensors in c.execute(sql, args)]


def rollout_drift_psi(
    c: Conn, rid: str, model: str, version: str, max_wave: int | None = None, wave: int | None = None
) -> float | None:
    """The drift_psi gate's value (fleet.gates): the worst PSI of the members' cohorts."""
    baseline = drift_baseline(c, model, version)
    if not baseline:
        return None
    return drift.max_psi(drift.by_cohort(baseline, rollout_drift(c, rid, model, version, max_wave, wave)))


def parse_selector(text: str | None) -> dict[str, str]:
    """ "site=berlin,tier=canary" -> {"site": "berlin", "tier": "canary"}; "" or "*" -> all devices."""
    if not text or text.strip() == "*":
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        if "=" not in part:
            from fleet.errors import FleetError

            raise FleetError(f"invalid selector {part!r}", hint="use label=value[,label=value]")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def row_to_dict(r: Row, now: float | None = None) -> dict[str, Any]:
    return {
        "id": r["id"],
        "labels": json.loads(r["labels"] or "{}"),
        "online": bool(r["online"]),
        "state": r["state"],
        "model": r["model"],
        "version": r["version"],
        "sequence": r["sequence"],
        "active_model": r["active_model"],
        "active_version": r["active_version"],
        "rollout": r["rollout"],
        "reason": r["reason"],
        "agent_version": r["agent_version"],
        "last_seen_s": None if r["last_seen"] is None else round((now or time.time()) - r["last_seen"], 1),
    }


class DeviceRegistry:
    def __init__(self, db: BaseDatabase):
        self.db = db

    def list(self, selector: dict[str, str] | None = None) -> list[dict[str, Any]]:
        now = time.time()
        rows = [row_to_dict(r, now) for r in self.db.query("SELECT * FROM devices ORDER BY id")]
        if selector:
            rows = [d for d in rows if all(d["labels"].get(k) == v for k, v in selector.items())]
        return rows

    def drift(self, model: str, version: str | None = None, by: str = drift.GATE_LABEL) -> dict[str, Any]:
        """`edgekit fleet drift`: per version (`version`, else every version devices reported),
        the score rows of each cohort of devices grouped by label `by` (fleet.drift)."""
        with self.db.lock:
            c = self.db.conn
            versions = [version] if version else drift_versions(c, model)
            out = []
            for v in versions:
                baseline = drift_baseline(c, model, v)
                rows = drift.by_cohort(baseline, drift_reports(c, model, v), by)
                out.append({"version": v, "baseline": bool(baseline), "rows": rows})
        return {"model": model, "by": by, "min_rows": drift.MIN_ROWS, "versions": out}
