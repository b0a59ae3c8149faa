"""Messages on the device topics other than the signed manifest (see edgekit.topics).

status (device -> server, QoS 1, JSON object):
    {"device": "dev-1", "state": "active", "model": "digits", "version": "1.2.0",
     "sequence": 7, "rollout": "r-1a2b" | null, "reason": null | "sha256_mismatch" | ...,
     "labels": {"site": "berlin"}, "ts": "2026-06-01T12:00:00Z"}
  `state` is one of STATES; `reason` says why on failed / rolled_back (a VerificationError
  reason, "smoke_test", "download", ...). `model`/`version`/`sequence` are those of the
  manifest the state refers to (on idle: what is installed, or null). A heartbeat re-sends
  the current state. Extra keys are allowed (e.g. "detail", "metrics") and ignored by the server.
  `delta` (optional, omitted when absent) says how the update's bytes arrived when the manifest
  offered a binary delta: "used", or "fallback:<reason>" (missing_base, bad_delta,
  sha256_mismatch, size_mismatch, a download reason, ...) when the full artifact was fetched instead.
  `health` (optional, omitted when absent) is what the device served over its last window, per
  model version: {"window_s": 30, "models": [{"model": "digits", "version": "1.2.0",
  "requests": 120, "errors": 0, "fallbacks": 3, "p95_ms": 4.2 | null}]}. The fleet's health
  gates (fleet.gates) judge a rollout's waves by it.
  `shadow` (optional, omitted when absent) compares each shadow version with the active one on
  mirrored live requests (ShadowStats): [{"model", "version", "requests", "top1_agreement",
  "cosine_mean", "max_abs", "latency_ratio", "dropped", "errors"}]. state "shadow" is the end of
  a shadow manifest: installed and smoke-tested beside the active version, never serving.
  `drift` (optional, omitted when absent) summarises what each model version was served since
  it was loaded, per input and output tensor (VersionDrift, edgekit.drift): [{"model", "version",
  "tensors": [{"name", "io", "count", "mean", "std", "hist": [counts in the baseline's bins],
  "classes": [counts] | null, "conf": [counts] | null}]}]. The fleet scores it against the
  release's baseline (fleet.drift).

online (device -> server, retained, QoS 1):
    {"device": "dev-1", "online": true, "labels": {...}, "agent_version": "0.1.0", "ts": "..."}
  The Last Will is the same message with "online": false (labels may be omitted there).

desired (server -> device, retained, QoS 1): a signed manifest envelope
    (edgekit.trust), or an empty retained message to clear it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, field
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic.dataclasses import dataclass

from edgekit import boundedjson, topics
from edgekit.trust.manifest_schema import MAX_DRIFT_BINS, MAX_DRIFT_CLASSES, MAX_DRIFT_TENSORS
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
    "shadow",  # a shadow manifest's successful end: installed beside the active version, not serving
)
IN_PROGRESS = frozenset({"downloading", "verifying", "staged", "smoke_tested"})
TERMINAL = frozenset({"active", "failed", "rolled_back"})
# Bounds of the wire format. Sequences are SQLite INTEGERs on the server (int64), so the largest
# one is 2**63-1. Size and depth are checked on the raw bytes, before any JSON parsing.
MAX_SEQUENCE = 2**63 - 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_DEPTH = 16  # the schema nests 2 levels; the rest is room for forward-compatible extra keys
MAX_LABELS = 64
MAX_HEALTH_MODELS = 32  # model versions in one health report
MAX_DRIFT_MODELS = 8  # model versions in one drift report (the agent also keeps it under DRIFT_BYTES)
MAX_SHADOWS = 32  # one shadow per model

# Named refusals (ProtocolError.reason): logs, counters and tests use these strings.
TOO_LARGE, TOO_DEEP, NOT_JSON = boundedjson.TOO_LARGE, boundedjson.TOO_DEEP, boundedjson.NOT_JSON
NOT_OBJECT = "not_object"
INVALID_DEVICE_ID = "invalid_device_id"
INVALID_STATUS, INVALID_ONLINE = "invalid_status", "invalid_online"
DEVICE_MISMATCH = "device_mismatch"


class ProtocolError(ValueError):
    """A status/online message that does not follow the schema; `reason` names the broken rule."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _check_device_id(value: str) -> str:
    if not topics.valid_name(value):
        raise ValueError("not a valid device id (letters, digits and . _ : @ -, at most 128)")
    return value


# No control characters in any string: they end up in log lines, tables and the CLI's output.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
DeviceId = Annotated[str, Strict(), StringConstraints(max_length=128), AfterValidator(_check_device_id)]
Name = Annotated[str, Strict(), StringConstraints(max_length=128, pattern=_PRINTABLE)]
Text = Annotated[str, Strict(), StringConstraints(max_length=1024, pattern=_PRINTABLE)]
LabelKey = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=64, pattern=_PRINTABLE)]
LabelValue = Annotated[str, Strict(), StringConstraints(max_length=256, pattern=_PRINTABLE)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]
Sequence = Annotated[int, Strict(), Field(ge=0, le=MAX_SEQUENCE)]
Timestamp = Annotated[str, Strict(), StringConstraints(max_length=64, pattern=_PRINTABLE)]

# Unknown keys are ignored (agents add "detail", "heartbeat", "active_version", ...), so a newer
# agent's report still reaches an older server.
_WIRE = ConfigDict(extra="ignore")


def _now() -> str:
    return iso(utcnow())


Count = Annotated[int, Strict(), Field(ge=0, le=MAX_SEQUENCE)]
Millis = Annotated[float, Field(ge=0, le=86_400_000, allow_inf_nan=False)]


@dataclass(config=_WIRE)
class VersionHealth:
    """What one model version served over the window (errors and fallbacks are among `requests`)."""

    model: Name
    version: Name
    requests: Count = 0
    errors: Count = 0
    fallbacks: Count = 0
    p95_ms: Millis | None = None  # None: no request was answered locally in the window


@dataclass(config=_WIRE)
class Health:
    window_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]
    models: Annotated[list[VersionHealth], Field(max_length=MAX_HEALTH_MODELS)] = field(default_factory=list)


Ratio = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


@dataclass(config=_WIRE)
class ShadowStats:
    """How a shadow version compares with the active one on the live requests mirrored to it
    since it was loaded (agent.shadow). The measures are None until `requests` > 0."""

    model: Name
    version: Name
    requests: Count = 0
    top1_agreement: Ratio | None = None  # None too when the first output is no score vector
    cosine_mean: Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)] | None = None
    max_abs: NonNegative | None = None
    latency_ratio: NonNegative | None = None  # shadow p50 / active p50 over the same requests
    dropped: Count = 0  # sampled requests not mirrored: the mirror's queue was full
    errors: Count = 0  # mirrored requests the shadow failed on (or answered in another shape)


@dataclass(config=_WIRE)
class TensorDrift:
    """What one tensor was served: the per-row mean's count, mean and std, its histogram in the
    baseline's bins (empty without a baseline), and for a classifier's output the class and
    top-1 confidence histograms."""

    name: Name
    io: Literal["input", "output"]
    count: Count = 0
    mean: Annotated[float, Field(allow_inf_nan=False)] | None = None
    std: NonNegative | None = None
    hist: Annotated[list[Count], Field(max_length=MAX_DRIFT_BINS)] = field(default_factory=list)
    classes: Annotated[list[Count], Field(max_length=MAX_DRIFT_CLASSES)] | None = None
    conf: Annotated[list[Count], Field(max_length=MAX_DRIFT_BINS)] | None = None


@dataclass(config=_WIRE)
class VersionDrift:
    model: Name
    version: Name
    tensors: Annotated[list[TensorDrift], Field(max_length=MAX_DRIFT_TENSORS)] = field(default_factory=list)


@dataclass(config=_WIRE)
class Status:
    device: DeviceId
    state: Literal[STATES]  # type: ignore[valid-type]
    model: Name | None = None
    version: Name | None = None
    sequence: Sequence | None = None
    rollout: Name | None = None
    reason: Text | None = None
    labels: Labels = field(default_factory=dict)
    ts: Timestamp = field(default_factory=_now)
    delta: Name | None = None
    health: Health | None = None
    shadow: Annotated[list[ShadowStats], Field(max_length=MAX_SHADOWS)] | None = None
    drift: Annotated[list[VersionDrift], Field(max_length=MAX_DRIFT_MODELS)] | None = None

    def to_json(self) -> bytes:
        doc = asdict(self)
        for optional in ("delta", "health", "shadow", "drift"):  # added later: absent rather than null
            if doc[optional] is None:
                del doc[optional]
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Status:
        return _parse(_STATUS, raw, INVALID_STATUS)


@dataclass(config=_WIRE)
class Online:
    device: DeviceId
    online: Annotated[bool, Strict()]
    labels: Labels = field(default_factory=dict)
    agent_version: Name | None = None
    ts: Timestamp = field(default_factory=_now)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Online:
        return _parse(_ONLINE, raw, INVALID_ONLINE)


_STATUS = TypeAdapter(Status)
_ONLINE = TypeAdapter(Online)
_M = TypeVar("_M")


def _parse(adapter: TypeAdapter[_M], raw: bytes | str, invalid: str) -> _M:
    try:
        doc = boundedjson.loads(raw, MAX_MESSAGE_BYTES, MAX_DEPTH)
    except boundedjson.JsonLimitError as e:
        raise ProtocolError(e.reason, e.detail) from None
    if not isinstance(doc, dict):
        raise ProtocolError(NOT_OBJECT, f"expected a JSON object, got {type(doc).__name__}")
    # null means "not given" for the defaulted fields (an agent sends "labels": null, "ts": null).
    doc = {k: v for k, v in doc.items() if not (v is None and k in ("labels", "ts"))}
    try:
        return adapter.validate_python(doc)
    except ValidationError as e:
        raise ProtocolError(invalid, describe(e)) from None


def describe(e: ValidationError, limit: int = 3) -> str:
    """The first few schema violations as one line, without echoing the offending values
    (attacker-chosen bytes stay out of the logs; the field path says enough)."""
    parts = []
    for err in e.errors(include_url=False, include_input=False)[:limit]:
        where = ".".join(
            repr(p)[:40] if not isinstance(p, str) or not p.isidentifier() else p for p in err["loc"]
        )
        parts.append(f"{where or 'message'}: {err['msg']}")
    more = e.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def last_will(device: str) -> bytes:
    """The payload an agent registers as its Last Will on the `online` topic."""
    return Online(device=device, online=False).to_json()
