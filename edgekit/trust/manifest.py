"""Update manifests: build them (fleet server) and verify them (agent).

signed = {
  "_type": "manifest", "fleet": "f", "device": "dev-1", "channel": "stable", "rollout": "r-..",
  "model": "digits", "version": "1.2.0", "sequence": 7,
  "artifacts": {"onnx": {"url", "sha256", "size", "file", "precision", "delta"?}, "tflite": {...}},
  "model_card": {... ModelCard.to_dict() ...},
  "smoke_test": {... see edgekit.trust.smoke ...} or null,
  "provenance": {... see edgekit.provenance ...}      (optional: the conversion report)
  "mode": "shadow"                                    (optional: absent means "active")
  "issued_at": "2026-..Z", "expires_at": "2026-..Z"
}
Typed, bounded and forward compatible: edgekit.trust.manifest_schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from edgekit.trust.envelope import MAX_DOCUMENT_BYTES, parse, sign
from edgekit.trust.errors import (
    EXPIRED,
    PROVENANCE_MISMATCH,
    REPLAY,
    WRONG_DEVICE,
    WRONG_FLEET,
    WRONG_TYPE,
    VerificationError,
)
from edgekit.trust.fields import validate_wire
from edgekit.trust.keys import SigningKey
from edgekit.trust.manifest_schema import (
    OPTIONAL_ARTIFACT_FIELDS,
    WIRE_ARTIFACT_FIELDS,
    Artifact,
    ManifestBody,
)
from edgekit.trust.root import Root, update_root_chain
from edgekit.trust.timeutil import iso, parse_iso, utcnow


def parse_manifest_body(signed: dict[str, Any]) -> ManifestBody:
    """Typed view of a manifest's `signed` part: wrong_type or malformed, never another exception."""
    if signed.get("_type") != "manifest":
        raise VerificationError(
            WRONG_TYPE, f"expected _type 'manifest', got {str(signed.get('_type'))[:40]!r}"
        )
    body = validate_wire(ManifestBody, signed, "manifest")
    check_provenance(body)
    return body


def check_provenance(body: ManifestBody) -> None:
    """The signed report must describe the signed bytes: each provenance row names the sha256
    and size of the artifact under the same key. A manifest without provenance passes (older
    fleets); a row for an artifact the manifest does not carry does not."""
    if body.provenance is None:
        return
    for key, row in body.provenance.artifacts.items():
        art = body.artifacts.get(key)
        if art is None:
            raise VerificationError(PROVENANCE_MISMATCH, f"provenance describes {key!r}, not in the manifest")
        if (row.sha256, row.size) != (art.sha256, art.size):
            raise VerificationError(
                PROVENANCE_MISMATCH,
                f"{key}: the report says sha256 {row.sha256[:16]}.. size {row.size}, "
                f"the artifact is {art.sha256[:16]}.. size {art.size}",
            )


@dataclass(frozen=True)
class Manifest:
    """A manifest whose shape was validated. From `ManifestVerifier.verify` it is also verified;
    `envelope` is the exact document (store and compare that), `body` the typed view.

    `Manifest(envelope)` validates the shape (VerificationError otherwise), not the signatures.
    """

    envelope: dict[str, Any]
    body: ManifestBody = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.body is None:
            object.__setattr__(self, "body", parse_manifest_body(self.envelope["signed"]))

    @property
    def signed(self) -> dict[str, Any]:
        return self.envelope["signed"]

    fleet = property(lambda self: self.body.fleet)
    device = property(lambda self: self.body.device)
    channel = property(lambda self: self.body.channel)
    rollout = property(lambda self: self.body.rollout)
    mode = property(lambda self: self.body.mode)
    model = property(lambda self: self.body.model)
    version = property(lambda self: self.body.version)
    sequence = property(lambda self: self.body.sequence)

    @property
    def model_card(self) -> dict[str, Any]:
        return self.signed["model_card"]

    @property
    def smoke_test(self) -> dict[str, Any] | None:
        """The signed smoke test as plain JSON (validated), for edgekit.trust.smoke."""
        return self.signed.get("smoke_test")

    @property
    def provenance(self) -> dict[str, Any] | None:
        """The signed conversion report as plain JSON (validated), for edgekit.provenance."""
        return self.signed.get("provenance")

    @property
    def artifacts(self) -> dict[str, Artifact]:
        return {key: self.body.artifact(key) for key in self.body.artifacts}

    @property
    def issued_at(self) -> datetime:
        return parse_iso(self.body.issued_at)

    @property
    def expires_at(self) -> datetime:
        return parse_iso(self.body.expires_at)

    def __getattr__(self, name: str) -> Any:
        # Fields a newer fleet added (ignored by the typed body) stay readable, untyped.
        # Via __dict__ (not self.envelope) so copy/pickle, which probe attributes before
        # __init__ ran, get AttributeError instead of infinite recursion.
        signed = self.__dict__.get("envelope", {}).get("signed", {})
        if not name.startswith("_") and name in signed:
            return signed[name]
        raise AttributeError(name)


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
    provenance: dict[str, Any] | None = None,
    channel: str = "stable",
    rollout: str | None = None,
    mode: str = "active",
    expires_in: timedelta = timedelta(days=7),
    now: datetime | None = None,
) -> dict[str, Any]:
    """The `signed` part of a manifest; sign it with `sign(signed, [release_key])`.

    Validated with the agents' own rules (VerificationError otherwise), so the fleet never
    signs a manifest its devices would refuse as malformed. `provenance` and an artifact's
    `delta` are left out when absent (None), `mode` when "active": such manifests stay
    byte-identical to what agents that predate the fields verify."""
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
        "artifacts": {fmt: _wire_artifact(a) for fmt, a in artifacts.items()},
        "model_card": model_card,
        "smoke_test": smoke_test,
        "issued_at": iso(now),
        "expires_at": iso(now + expires_in),
    }
    if provenance is not None:
        signed["provenance"] = provenance
    if mode != "active":
        signed["mode"] = mode
    parse_manifest_body(signed)
    return signed


def _wire_artifact(a: dict[str, Any]) -> dict[str, Any]:
    return {
        k: a[k] for k in WIRE_ARTIFACT_FIELDS if k not in OPTIONAL_ARTIFACT_FIELDS or a.get(k) is not None
    }


def sign_manifest(signed: dict[str, Any], keys: list[SigningKey]) -> dict[str, Any]:
    return sign(signed, keys)


class ManifestVerifier:
    """Everything an agent checks before it acts on a `desired` message.

    Order of checks: size/JSON bounds -> envelope shape -> signatures (release role of the
    trusted root) -> typed manifest fields -> expiry -> fleet -> device -> sequence -> the trusted
    root unexpired (`expired_root`). Signatures come before reading any field so nothing unauthenticated
    influences the decision. Every refusal is a VerificationError with a reason code
    (edgekit.trust.errors); nothing else escapes for any input bytes.
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
        """Follow root rotations (see `update_root_chain`); the caller persists `self.root`.
        The new root is trusted even when expired (TUF); `verify` then refuses `expired_root`."""
        self.root = update_root_chain(self.root, raws)
        return self.root

    def verify(self, raw: bytes | str) -> Manifest:
        env = parse(raw, self.max_bytes)
        self.root.check(env, "release")
        m = Manifest(env)
        if m.expires_at <= self.now():
            raise VerificationError(EXPIRED, f"manifest expired at {m.body.expires_at}")
        if m.fleet != self.fleet:
            raise VerificationError(WRONG_FLEET, f"for fleet {m.fleet!r}, this is {self.fleet!r}")
        if m.device != self.device_id:
            raise VerificationError(WRONG_DEVICE, f"for device {m.device!r}, this is {self.device_id!r}")
        if m.sequence <= self.last_sequence:
            raise VerificationError(REPLAY, f"sequence {m.sequence} is not newer than {self.last_sequence}")
        # Last: the document is otherwise acceptable, only its authority is stale. So a
        # redelivered copy of what the device already runs stays a `replay`, never a failure.
        self.root.check_unexpired(self.now())
        return m

    def accept(self, manifest: Manifest) -> None:
        """Record that the agent acted on `manifest` (persist `last_sequence` yourself)."""
        self.last_sequence = max(self.last_sequence, manifest.sequence)
