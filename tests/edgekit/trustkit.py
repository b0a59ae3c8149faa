"""One home for the trust tests' fixtures: a fixed clock, a valid manifest, a trusted root, a verifier."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edgekit.trust import (
    REASONS,
    ManifestVerifier,
    SigningKey,
    VerificationError,
    build_manifest,
    build_root,
    dumps,
    load_trusted_root,
    sign_root,
)

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
SHA = "ab" * 32


def new_keys(*names: str) -> dict[str, SigningKey]:
    return {n: SigningKey.generate() for n in names}


def trusted_root(root_key: SigningKey, release_keys: list[SigningKey], now: datetime = NOW) -> Any:
    signed = build_root([root_key], [k.public_hex for k in release_keys], now=now)
    return load_trusted_root(dumps(sign_root(signed, [root_key])), now=now)


def signed_manifest(**over: Any) -> dict[str, Any]:
    """The `signed` part of a valid manifest for device dev-1 of fleet f1; `over` replaces fields."""
    fields: dict[str, Any] = dict(
        fleet="f1",
        device="dev-1",
        model="digits",
        version="1.0.0",
        sequence=5,
        artifacts={
            "onnx": {"url": "http://x/a", "sha256": SHA, "size": 10, "file": "m.onnx", "precision": "fp32"}
        },
        model_card={"name": "digits", "inputs": [], "outputs": [], "preprocessing": {"scale": 0.5}},
        rollout="r1",
        now=NOW,
    )
    fields.update(over)
    return build_manifest(**fields)


def verifier(root: Any, **over: Any) -> ManifestVerifier:
    """A verifier one minute after NOW that has accepted sequence 4."""
    args: dict[str, Any] = dict(
        fleet="f1", device_id="dev-1", last_sequence=4, now=NOW + timedelta(minutes=1)
    )
    args.update(over)
    return ManifestVerifier(root, **args)


def refusal(fn: Any) -> VerificationError:
    """The named refusal `fn` raises: a known reason code and a one-line message, never a traceback."""
    with pytest.raises(VerificationError) as ei:
        fn()
    assert ei.value.reason in REASONS
    assert "Traceback" not in str(ei.value)
    return ei.value
