"""Signed model updates, TUF-style and small. The agent and the fleet server share this code.

Documents are `{"signed": {...}, "signatures": [{"keyid": hex, "sig": hex}]}`; what is signed
is `canonical_json(signed)` (sorted keys, no spaces, UTF-8). Keys are Ed25519; a keyid is the
sha256 hex of the 32 raw public-key bytes.

Agent side (verify)::

    from edgekit.trust import load_trusted_root, ManifestVerifier, VerificationError, verify_artifact

    root = load_trusted_root(Path("root.json").read_bytes())    # enrolled out of band
    v = ManifestVerifier(root, fleet="f", device_id="dev-1", last_sequence=persisted_seq)
    v.update_root([raw_root_v2, raw_root_v3])   # from the retained `edgekit/{f}/roots` topic
    try:
        m = v.verify(payload)          # payload of edgekit/{f}/devices/{d}/desired
    except VerificationError as e:
        report(state="failed", reason=e.reason)   # e.reason: one of REASONS below
    else:
        v.accept(m)                    # then persist v.last_sequence and v.root.envelope
        art = m.artifacts["onnx"]      # Artifact(format, url, sha256, size, file, precision)
        download(art.url, dest)        # HTTP Range resume is supported by the server
        verify_artifact(dest, art.size, art.sha256)      # size_mismatch | sha256_mismatch
        out = run(model, smoke_inputs(m.smoke_test))     # m.smoke_test may be None
        res = check_smoke_outputs(m.smoke_test, out, precision=art.precision)   # res.ok

    Manifest fields (m.<name>): fleet, device, channel, rollout, model, version, sequence,
    artifacts, model_card, smoke_test, issued_at, expires_at (datetimes); m.body is the typed,
    bounded view (edgekit.trust.manifest_schema.ManifestBody), m.envelope the raw document.
    Unknown fields are ignored; `model`, artifact keys and file names are safe names
    (edgekit.trust.names: one path component, checked before anything becomes a path).

Refusal reasons (`VerificationError.reason`): listed with their meaning in edgekit.trust.errors
(malformed, oversized, bad_signature, unknown_key, threshold, expired, expired_root, replay,
wrong_fleet, wrong_device, wrong_type, root_version, size_mismatch, sha256_mismatch,
provenance_mismatch).

Root expiry follows TUF (see edgekit.trust.root): the enrolment root and intermediate roots may
be expired; the newest trusted root must not be when a manifest is verified (`expired_root`).

Server side (sign)::

    key = SigningKey.generate(); key.save(path)      # 0600 PEM
    root_signed = build_root([root_key], [release_key.public_hex], version=1)
    root_env = sign_root(root_signed, [root_key])
    signed = build_manifest(fleet=..., device=..., model=..., version=..., sequence=...,
                            artifacts={"onnx": {"url", "sha256", "size", "file", "precision"}},
                            model_card=card.to_dict(), smoke_test=build_smoke_test(ins, outs))
    payload = dumps(sign(signed, [release_key]))

Root rotation: a new root (version+1) must be signed by the threshold of the OLD root role and
of its own root role (`sign_root(new_signed, [old_root_key, new_root_key])`).
"""

from edgekit.trust.artifact import sha256_file, verify_artifact
from edgekit.trust.canonical import canonical_json
from edgekit.trust.envelope import MAX_DOCUMENT_BYTES, dumps, parse, sign
from edgekit.trust.errors import REASONS, VerificationError
from edgekit.trust.keys import SigningKey, keyid_for, verify_signature
from edgekit.trust.manifest import Manifest, ManifestVerifier, build_manifest, sign_manifest
from edgekit.trust.manifest_schema import Artifact, ManifestBody
from edgekit.trust.names import check_safe_name, is_safe_name
from edgekit.trust.root import Root, build_root, load_trusted_root, sign_root, update_root, update_root_chain
from edgekit.trust.smoke import (
    DEFAULT_TOLERANCE,
    SmokeResult,
    build_smoke_test,
    check_smoke_outputs,
    decode_tensor,
    encode_tensor,
    smoke_inputs,
)
from edgekit.trust.timeutil import iso, parse_iso, utcnow

__all__ = [
    "DEFAULT_TOLERANCE",
    "MAX_DOCUMENT_BYTES",
    "REASONS",
    "Artifact",
    "Manifest",
    "ManifestBody",
    "ManifestVerifier",
    "Root",
    "SigningKey",
    "SmokeResult",
    "VerificationError",
    "build_manifest",
    "build_root",
    "build_smoke_test",
    "canonical_json",
    "check_safe_name",
    "check_smoke_outputs",
    "decode_tensor",
    "dumps",
    "encode_tensor",
    "is_safe_name",
    "iso",
    "keyid_for",
    "load_trusted_root",
    "parse",
    "parse_iso",
    "sha256_file",
    "sign",
    "sign_manifest",
    "sign_root",
    "smoke_inputs",
    "update_root",
    "update_root_chain",
    "utcnow",
    "verify_artifact",
    "verify_signature",
]
