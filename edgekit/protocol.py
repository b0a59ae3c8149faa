"""Messages on the device topics other than the signed manifest (see edgekit.topics).

status (device -> server, QoS 1, JSON object):
    {"device": "dev-1", "state": "active", "model": "digits", "version": "1.2.0",
     "sequence": 7, "rollout": "r-1a2b" | null, "reason": null | "sha256_mismatch" | ...,
     "labels": {"site": "berlin"}, "ts": "2026-06-01T12:00:00Z"}
  `state` is one of STATES; `reason` says why on failed / rolled_back (a VerificationError
  reason, "smoke_test", "download", ...). `model`/`version`/`sequence` are those of the
  manifest the state refers to (on idle: what is installed, or null). A heartbeat re-sends
  the current state. Extra keys are allowed (e.g. "detail", "metrics") and ignored by the server.

online (device -> server, retained, QoS 1):
    {"device": "dev-1", "online": true, "labels": {...}, "agent_version": "0.1.0", "ts": "..."}
  The Last Will is the same message with "online": false (labels may be omitted there).

desired (server -> device, retained, QoS 1): a signed manifest envelope
    (edgekit.trust), or an empty retained message to clear it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from edgekit.trust.timeutil import iso, utcnow

STATES = (
    "idle",
    "downloading",
    "verifying",
    "staged",
    "smoke_tested",
    "active",
    "failed",
    "rolled_back",
)
IN_PROGRESS = frozenset({"downloading", "verifying", "staged", "smoke_tested"})
TERMINAL = frozenset({"active", "failed", "rolled_back"})
MAX_MESSAGE_BYTES = 64 * 1024


class ProtocolError(ValueError):
    """A status/online message that does not follow the schema."""


def _labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ProtocolError("labels must be an object of string -> string")
    return dict(value)


def _loads(raw: bytes | str) -> dict[str, Any]:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError("message too large")
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise ProtocolError(f"not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ProtocolError("expected a JSON object")
    return doc


@dataclass
class Status:
    device: str
    state: str
    model: str | None = None
    version: str | None = None
    sequence: int | None = None
    rollout: str | None = None
    reason: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    ts: str = field(default_factory=lambda: iso(utcnow()))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Status:
        d = _loads(raw)
        if not isinstance(d.get("device"), str):
            raise ProtocolError("status: 'device' must be a string")
        if d.get("state") not in STATES:
            raise ProtocolError(f"status: 'state' must be one of {', '.join(STATES)}")
        seq = d.get("sequence")
        if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
            raise ProtocolError("status: 'sequence' must be an int or null")
        for key in ("model", "version", "rollout", "reason", "ts"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise ProtocolError(f"status: {key!r} must be a string or null")
        return cls(
            device=d["device"],
            state=d["state"],
            model=d.get("model"),
            version=d.get("version"),
            sequence=seq,
            rollout=d.get("rollout"),
            reason=d.get("reason"),
            labels=_labels(d.get("labels")),
            ts=d.get("ts") or iso(utcnow()),
        )


@dataclass
class Online:
    device: str
    online: bool
    labels: dict[str, str] = field(default_factory=dict)
    agent_version: str | None = None
    ts: str = field(default_factory=lambda: iso(utcnow()))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Online:
        d = _loads(raw)
        if not isinstance(d.get("device"), str) or not isinstance(d.get("online"), bool):
            raise ProtocolError("online: needs 'device' (string) and 'online' (bool)")
        return cls(
            device=d["device"],
            online=d["online"],
            labels=_labels(d.get("labels")),
            agent_version=d.get("agent_version") if isinstance(d.get("agent_version"), str) else None,
            ts=d.get("ts") if isinstance(d.get("ts"), str) else iso(utcnow()),
        )


def last_will(device: str) -> bytes:
    """The payload an agent registers as its Last Will on the `online` topic."""
    return Online(device=device, online=False).to_json()
