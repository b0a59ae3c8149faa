"""The one exception the verifier raises, with a machine-readable reason code.

Reason codes (`VerificationError.reason`), reported by the agent on `status`:

    malformed        not UTF-8 JSON; nested deeper than safejson.MAX_JSON_DEPTH; NaN/Infinity or
                     an out-of-range number; not an envelope; a field missing, of the wrong type or
                     out of bounds (names not safe per edgekit.trust.names, sha256 not 64 lowercase
                     hex, sequence/size/version outside 0..2**63-1, too many artifacts/signatures)
    oversized        more bytes than the limit (envelope.MAX_DOCUMENT_BYTES), refused unparsed
    bad_signature    a signature by an authorized key does not verify, or no signature at all
    unknown_key      signed only by keys not in the role (also a revoked key: rotated out)
    threshold        some valid signatures, fewer than the role's threshold
    expired          the manifest's `expires_at` has passed
    expired_root     the newest trusted root has expired: nothing it authorizes is accepted until
                     a newer root arrives (TUF: intermediate roots may be expired, the final not)
    replay           sequence not newer than the last accepted one (replay / rollback attack)
    wrong_fleet      manifest for another fleet
    wrong_device     manifest for another device
    wrong_type       a root where a manifest is expected, or the reverse
    root_version     a root rotation that is not exactly version + 1
    size_mismatch    downloaded artifact size differs from the manifest
    sha256_mismatch  downloaded artifact digest differs from the manifest
    provenance_mismatch  the manifest's provenance (its conversion report) describes an artifact
                     by another sha256 or size than the artifact entry, or an artifact the
                     manifest does not carry: the report is not about these bytes
"""

from __future__ import annotations

from edgekit.errors import EdgekitError

# Every refusal has its own code so the agent can report it on `status` and tests can assert it.
MALFORMED = "malformed"
OVERSIZED = "oversized"
BAD_SIGNATURE = "bad_signature"
UNKNOWN_KEY = "unknown_key"
THRESHOLD = "threshold"
EXPIRED = "expired"
EXPIRED_ROOT = "expired_root"
REPLAY = "replay"
WRONG_FLEET = "wrong_fleet"
WRONG_DEVICE = "wrong_device"
WRONG_TYPE = "wrong_type"
ROOT_VERSION = "root_version"
SIZE_MISMATCH = "size_mismatch"
SHA256_MISMATCH = "sha256_mismatch"
PROVENANCE_MISMATCH = "provenance_mismatch"

REASONS = frozenset(
    {
        MALFORMED,
        OVERSIZED,
        BAD_SIGNATURE,
        UNKNOWN_KEY,
        THRESHOLD,
        EXPIRED,
        EXPIRED_ROOT,
        REPLAY,
        WRONG_FLEET,
        WRONG_DEVICE,
        WRONG_TYPE,
        ROOT_VERSION,
        SIZE_MISMATCH,
        SHA256_MISMATCH,
        PROVENANCE_MISMATCH,
    }
)


class VerificationError(EdgekitError):
    """A signed document or an artifact was refused. `reason` is one of `REASONS`."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:  # a programming error, not input: never skipped under -O
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message
