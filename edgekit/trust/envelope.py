"""The signed envelope `{"signed": {...}, "signatures": [{"keyid", "sig"}]}` and its checks."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from edgekit.trust import safejson
from edgekit.trust.canonical import canonical_json
from edgekit.trust.errors import (
    BAD_SIGNATURE,
    MALFORMED,
    THRESHOLD,
    UNKNOWN_KEY,
    VerificationError,
)
from edgekit.trust.fields import validate_wire
from edgekit.trust.keys import SigningKey, verify_signature

# A manifest carries a model card and one golden input; 1 MiB leaves room for a 224x224x3
# float32 image in base64 while still refusing a hostile multi-megabyte payload before parsing.
MAX_DOCUMENT_BYTES = 1024 * 1024
# Each signature by an authorized key costs an Ed25519 verify; a threshold above a handful of
# keys is unheard of, so 32 bounds the work one document can ask for.
MAX_SIGNATURES = 32

# Lengths bounded loosely (an Ed25519 keyid is 64 hex, a signature 128): a wrong-length or
# non-hex signature is a signature that does not verify (bad_signature), not a format error.
_Hex = Annotated[str, StringConstraints(max_length=256)]


class _Signature(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    keyid: _Hex
    sig: _Hex


class _Envelope(BaseModel):
    # Exactly these two keys: the envelope itself is not signed, so nothing else may ride along.
    model_config = ConfigDict(extra="forbid", strict=True)
    signed: dict[str, Any]
    signatures: list[_Signature] = Field(max_length=MAX_SIGNATURES)


def sign(signed: dict[str, Any], keys: list[SigningKey]) -> dict[str, Any]:
    """Wrap `signed` in an envelope signed by each key."""
    data = canonical_json(signed)
    return {"signed": signed, "signatures": [{"keyid": k.keyid, "sig": k.sign(data)} for k in keys]}


def dumps(envelope: dict[str, Any]) -> bytes:
    """Wire form of an envelope (canonical too, so it is byte-stable)."""
    return canonical_json(envelope)


def parse(raw: bytes | str, max_bytes: int = MAX_DOCUMENT_BYTES) -> dict[str, Any]:
    """Bytes -> envelope dict, refusing oversized (`oversized`) and malformed (`malformed`) input.

    The dict is the parsed document itself (not a re-serialization), so what is checked,
    stored and re-published is exactly what was received."""
    doc = safejson.loads(raw, max_bytes)
    if not isinstance(doc, dict):
        raise VerificationError(MALFORMED, "expected an object with 'signed' and 'signatures'")
    validate_wire(_Envelope, doc, "envelope")
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
    except ValueError as e:  # NaN, lone surrogates: cannot have been signed
        raise VerificationError(MALFORMED, str(e)[:200]) from None
    allowed = set(keyids)
    valid: set[str] = set()
    bad = unknown = 0
    for s in envelope["signatures"]:
        kid = s["keyid"]
        if kid not in allowed or kid not in keys:
            unknown += 1
            continue
        if kid in valid:
            continue  # the same key twice counts once, and costs one verify
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
