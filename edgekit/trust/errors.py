"""The one exception the verifier raises, with a machine-readable reason code."""

from __future__ import annotations

from edgekit.errors import EdgekitError

# Every refusal has its own code so the agent can report it on `status` and tests can assert it.
MALFORMED = "malformed"
OVERSIZED = "oversized"
BAD_SIGNATURE = "bad_signature"
UNKNOWN_KEY = "unknown_key"
THRESHOLD = "threshold"
EXPIRED = "expired"
REPLAY = "replay"
WRONG_FLEET = "wrong_fleet"
WRONG_DEVICE = "wrong_device"
WRONG_TYPE = "wrong_type"
ROOT_VERSION = "root_version"
SIZE_MISMATCH = "size_mismatch"
SHA256_MISMATCH = "sha256_mismatch"

REASONS = frozenset(
    {
        MALFORMED,
        OVERSIZED,
        BAD_SIGNATURE,
        UNKNOWN_KEY,
        THRESHOLD,
        EXPIRED,
        REPLAY,
        WRONG_FLEET,
        WRONG_DEVICE,
        WRONG_TYPE,
        ROOT_VERSION,
        SIZE_MISMATCH,
        SHA256_MISMATCH,
    }
)


class VerificationError(EdgekitError):
    """A signed document or an artifact was refused. `reason` is one of `REASONS`."""

    def __init__(self, reason: str, message: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message
