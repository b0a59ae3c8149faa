"""Update manifests: build them (fleet server) and verify them (agent).

signed = {
  "_type": "manifest", "fleet": "f", "device": "dev-1", "channel": "stable", "rollout": "r-..",
  "model": "digits", "version": "1.2.0", "sequence": 7,
  "artifacts": {"onnx": {"url", "sha256", "size", "file", "precision"}, "tflite": {...}},
  "model_card": {... ModelCard.to_dict() ...},
  "smoke_test": {... see edgekit.trust.smoke ...} or null,
  "issued_at": "2026-..Z", "expires_at": "2026-..Z"
}
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from edgekit.trust.envelope import MAX_DOCUMENT_BYTES, parse, sign
from edgekit.trust.errors import (
    EXPIRED,
    MALFORMED,
    REPLAY,
    WRONG_DEVICE,
    WRONG_FLEET,
    WRONG_TYPE,
    VerificationError,
)
from edgekit.trust.keys import SigningKey
from edgekit.trust.root import Root
from edgekit.trust.timeutil import iso, parse_iso, utcnow

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "fleet": str,
    "device": str,
    "channel": str,
    "rollout": (str, type(None)),
    "model": str,
    "version": str,
    "sequence": int,
    "artifacts": dict,
    "model_card": dict,
    "smoke_test": (dict, type(None)),
    "issued_at": str,
    "expires_at": str,
}
_ARTIFACT: dict[str, type | tuple[type, ...]] = {
    "url": str,
    "sha256": str,
    "size": int,
    "file": str,
    "precision": str,
}


@dataclass(frozen=True)
class Artifact:
    format: str
    url: str
    sha256: str
    size: int
    file: str
    precision: str


@dataclass(frozen=True)
class Manifest:
    """A verified manifest. `envelope` is the exact document that was verified."""

    envelope: dict[str, Any]

    @property
    def signed(self) -> dict[str, Any]:
        return self.envelope["signed"]

    def __getattr__(self, name: str) -> Any:
        # fleet, device, channel, rollout, model, version, sequence, model_card, smoke_test, ...
        # Via __dict__ (not self.envelope) so copy/pickle, which probe attributes before
        # __init__ ran, get AttributeError instead of infinite recursion.
        signed = self.__dict__.get("envelope", {}).get("signed", {})
        if name in signed:
            return signed[name]
        raise AttributeError(name)

    @property
    def artifacts(self) -> dict[str, Artifact]:
        return {fmt: Artifact(format=fmt, **a) for fmt, a in self.signed["artifacts"].items()}

    @property
    def expires_at(self) -> datetime:
        return parse_iso(self.signed["expires_at"])


def build_manifest(
    *,
    fleet: str,
    device: str,
    model: str,
    version: str,
    sequence: int,
    artifacts: dict[str, dict[str, Any]],
    model_card: dict[str, Any],
    smoke_test: dict[str, Any] | None = None,
    channel: str = "stable",
    rollout: str | None = None,
    expires_in: timedelta = timedelta(days=7),
    now: datetime | None = None,
) -> dict[str, Any]:
    """The `signed` part of a manifest; sign it with `sign(signed, [release_key])`."""
    now = now or utcnow()
    signed = {
        "_type": "manifest",
        "fleet": fleet,
        "device": device,
        "channel": channel,
        "rollout": rollout,
        "model": model,
        "version": version,
        "sequence": sequence,
        "artifacts": {fmt: {k: a[k] for k in _ARTIFACT} for fmt, a in artifacts.items()},
        "model_card": model_card,
        "smoke_test": smoke_test,
        "issued_at": iso(now),
        "expires_at": iso(now + expires_in),
    }
    _validate_shape(signed)
    return signed


def sign_manifest(signed: dict[str, Any], keys: list[SigningKey]) -> dict[str, Any]:
    return sign(signed, keys)


def _typed(value: Any, typ: type | tuple[type, ...]) -> bool:
    # bool is an int subclass; a sequence or size of `true` is malformed.
    return isinstance(value, typ) and not (isinstance(value, bool) and typ in (int, (int,)))


def _validate_shape(signed: dict[str, Any]) -> None:
    if signed.get("_type") != "manifest":
        raise VerificationError(WRONG_TYPE, f"expected _type 'manifest', got {signed.get('_type')!r}")
    for key, typ in _REQUIRED.items():
        if key not in signed or not _typed(signed[key], typ):
            raise VerificationError(MALFORMED, f"field {key!r} missing or of the wrong type")
    if signed["sequence"] < 0:
        raise VerificationError(MALFORMED, "sequence must be >= 0")
    if not signed["artifacts"]:
        raise VerificationError(MALFORMED, "no artifacts")
    for fmt, a in signed["artifacts"].items():
        if not isinstance(a, dict):
            raise VerificationError(MALFORMED, f"artifact {fmt!r} is not an object")
        for key, typ in _ARTIFACT.items():
            if key not in a or not _typed(a[key], typ):
                raise VerificationError(MALFORMED, f"artifact {fmt!r}: field {key!r} missing or wrong type")
        if len(a["sha256"]) != 64 or a["size"] < 0:
            raise VerificationError(MALFORMED, f"artifact {fmt!r}: bad sha256 or size")
    for key in ("issued_at", "expires_at"):
        try:
            parse_iso(signed[key])
        except ValueError as e:
            raise VerificationError(MALFORMED, f"{key}: {e}") from e


class ManifestVerifier:
    """Everything an agent checks before it acts on a `desired` message.

    Order of checks: size -> JSON shape -> signatures (release role of the trusted root) ->
    manifest fields -> expiry -> fleet -> device -> sequence. Signatures come before reading
    any field so nothing unauthenticated influences the decision.
    """

    def __init__(
        self,
        trusted_root: Root,
        fleet: str,
        device_id: str,
        last_sequence: int = -1,
        now: datetime | None = None,
        max_bytes: int = MAX_DOCUMENT_BYTES,
    ):
        self.root = trusted_root
        self.fleet = fleet
        self.device_id = device_id
        self.last_sequence = last_sequence
        self._now = now
        self.max_bytes = max_bytes

    def now(self) -> datetime:
        return self._now or utcnow()

    def update_root(self, raws: list[bytes | str | dict[str, Any]]) -> Root:
        """Follow root rotations (see `update_root_chain`); the caller persists `self.root`."""
        from edgekit.trust.root import update_root_chain

        self.root = update_root_chain(self.root, raws, self.now())
        return self.root

    def verify(self, raw: bytes | str) -> Manifest:
        env = parse(raw, self.max_bytes)
        self.root.check(env, "release")
        signed = env["signed"]
        _validate_shape(signed)
        if parse_iso(signed["expires_at"]) <= self.now():
            raise VerificationError(EXPIRED, f"manifest expired at {signed['expires_at']}")
        if signed["fleet"] != self.fleet:
            raise VerificationError(WRONG_FLEET, f"for fleet {signed['fleet']!r}, this is {self.fleet!r}")
        if signed["device"] != self.device_id:
            raise VerificationError(
                WRONG_DEVICE, f"for device {signed['device']!r}, this is {self.device_id!r}"
            )
        if signed["sequence"] <= self.last_sequence:
            raise VerificationError(
                REPLAY, f"sequence {signed['sequence']} is not newer than {self.last_sequence}"
            )
        return Manifest(env)

    def accept(self, manifest: Manifest) -> None:
        """Record that the agent acted on `manifest` (persist `last_sequence` yourself)."""
        self.last_sequence = max(self.last_sequence, manifest.sequence)
