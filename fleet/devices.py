"""The device registry, learned from what devices say on `status` and `online`.

A device is known once it has said anything; its labels are whatever it last reported.
Offline comes from the Last Will on `online` (or an explicit online=false).
"""

from __future__ import annotations

import json
import time
from typing import Any

from edgekit import topics
from edgekit.protocol import Health, Online, Status
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
