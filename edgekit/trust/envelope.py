"""The signed envelope `{"signed": {...}, "signatures": [{"keyid", "sig"}]}` and its checks."""

from __future__ import annotations

import json
from typing import Any

from edgekit.trust.canonical import canonical_json
from edgekit.trust.errors import (
    BAD_SIGNATURE,
    MALFORMED,
    OVERSIZED,
    THRESHOLD,
    UNKNOWN_KEY,
    VerificationError,
)
from edgekit.trust.keys import SigningKey, verify_signature

# A manifest carries a model card and one golden input; 1 MiB leaves room for a 224x224x3
# float32 image in base64 while still refusing a hostile multi-megabyte payload before parsing.
MAX_DOCUMENT_BYTES = 1024 * 1024


def sign(signed: dict[str, Any], keys: list[SigningKey]) -> dict[str, Any]:
    """Wrap `signed` in an envelope signed by each key."""
    data = canonical_json(signed)
    return {"signed": signed, "signatures": [{"keyid": k.keyid, "sig": k.sign(data)} for k in keys]}


def dumps(envelope: dict[str, Any]) -> bytes:
    """Wire form of an envelope (canonical too, so it is byte-stable)."""
    return canonical_json(envelope)


def parse(raw: bytes | str, max_bytes: int = MAX_DOCUMENT_BYTES) -> dict[str, Any]:
    """Bytes -> envelope dict, refusing oversized and malformed input."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if len(raw) > max_bytes:
        raise VerificationError(OVERSIZED, f"{len(raw)} bytes > limit {max_bytes}")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise VerificationError(MALFORMED, f"not JSON: {e}") from e
    if not isinstance(doc, dict) or set(doc) != {"signed", "signatures"}:
        raise VerificationError(MALFORMED, "expected an object with exactly 'signed' and 'signatures'")
    if not isinstance(doc["signed"], dict) or not isinstance(doc["signatures"], list):
        raise VerificationError(MALFORMED, "'signed' must be an object and 'signatures' a list")
    for s in doc["signatures"]:
        if not (isinstance(s, dict) and isinstance(s.get("keyid"), str) and isinstance(s.get("sig"), str)):
            raise VerificationError(MALFORMED, "each signature needs string 'keyid' and 'sig'")
    return doc


def check_threshold(
    envelope: dict[str, Any], keys: dict[str, dict[str, str]], keyids: list[str], threshold: int, role: str
) -> None:
    """Require `threshold` valid signatures by distinct keys of `keyids`.

    Refusal codes, most specific first: no valid signature and some signature by an authorized
    key failed -> bad_signature; no signature by any authorized key -> unknown_key (this is
    also what a revoked key gets: it is no longer in the role); some valid but too few -> threshold.
    """
    try:
        data = canonical_json(envelope["signed"])
    except ValueError as e:
        raise VerificationError(MALFORMED, str(e)) from e
    allowed = set(keyids)
    valid: set[str] = set()
    bad = unknown = 0
    for s in envelope["signatures"]:
        kid = s["keyid"]
        if kid not in allowed or kid not in keys:
            unknown += 1
            continue
        if verify_signature(keys[kid]["public"], s["sig"], data):
            valid.add(kid)
        else:
            bad += 1
    if len(valid) >= threshold:
        return
    if not valid and bad:
        raise VerificationError(BAD_SIGNATURE, f"{role}: signature does not verify")
    if not valid and not envelope["signatures"]:
        raise VerificationError(BAD_SIGNATURE, f"{role}: no signatures")
    if not valid:
        raise VerificationError(UNKNOWN_KEY, f"{role}: signed by {unknown} key(s) not trusted for this role")
    raise VerificationError(THRESHOLD, f"{role}: {len(valid)} valid signature(s), threshold is {threshold}")
