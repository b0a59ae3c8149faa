"""Root expiry as TUF does it (python-tuf ngclient's root update), with an injected clock:
the enrolment root and intermediate roots may be expired, the final trusted root may not be."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edgekit.trust import (
    ManifestVerifier,
    SigningKey,
    VerificationError,
    build_root,
    dumps,
    load_trusted_root,
    sign,
    sign_root,
    update_root_chain,
)
from tests.edgekit.trustkit import signed_manifest

T0 = datetime(2026, 1, 1, tzinfo=UTC)
YEAR = timedelta(days=365)


@pytest.fixture(scope="module")
def k() -> dict[str, SigningKey]:
    return {n: SigningKey.generate() for n in ("root1", "root2", "root3", "rel1", "rel2", "rel3")}


def root_doc(k, version: int, root: str, release: str, signers: list[str], issued: datetime) -> bytes:
    signed = build_root([k[root]], [k[release].public_hex], version=version, expires_in=YEAR, now=issued)
    return dumps(sign_root(signed, [k[s] for s in signers]))


def manifest(k, release: str, now: datetime, sequence: int = 1) -> bytes:
    signed = signed_manifest(fleet="f", device="d", sequence=sequence, model_card={}, rollout=None, now=now)
    return dumps(sign(signed, [k[release]]))


def verifier(root, now: datetime) -> ManifestVerifier:
    return ManifestVerifier(root, "f", "d", now=now)


def test_expired_enrolment_root_loads(k):
    """Regression: an agent refused to start 365 days after `keys init`."""
    v1 = root_doc(k, 1, "root1", "rel1", ["root1"], T0)
    root = load_trusted_root(v1, now=T0 + 2 * YEAR)
    assert root.version == 1 and root.is_expired(T0 + 2 * YEAR)


def test_final_root_must_be_unexpired_to_verify_manifests(k):
    """Regression: the final trusted root's expiry was never checked."""
    root = load_trusted_root(root_doc(k, 1, "root1", "rel1", ["root1"], T0))
    now = T0 + YEAR + timedelta(seconds=1)
    with pytest.raises(VerificationError) as ei:
        verifier(root, now).verify(manifest(k, "rel1", now))
    assert ei.value.reason == "expired_root" and "rotate" in ei.value.detail
    just_before = T0 + YEAR - timedelta(seconds=1)
    assert verifier(root, just_before).verify(manifest(k, "rel1", just_before)).sequence == 1


def test_chain_through_expired_intermediate_roots(k):
    """A device enrolled with v1 and offline for years walks v2 (expired) to v3 (current)."""
    v1 = root_doc(k, 1, "root1", "rel1", ["root1"], T0)
    v2 = root_doc(k, 2, "root2", "rel2", ["root1", "root2"], T0 + timedelta(days=10))
    v3 = root_doc(k, 3, "root3", "rel3", ["root2", "root3"], T0 + 3 * YEAR)
    now = T0 + 3 * YEAR + timedelta(days=1)
    v = verifier(load_trusted_root(v1, now=now), now)
    assert v.update_root([v3, v2]).version == 3
    assert v.verify(manifest(k, "rel3", now)).sequence == 1
    with pytest.raises(VerificationError) as ei:  # the rotated-out release key stays revoked
        v.verify(manifest(k, "rel2", now))
    assert ei.value.reason == "unknown_key"


def test_chain_ending_in_expired_root_is_followed_then_recovered(k):
    """The newest root is trusted even when expired (so it can be persisted and later rotated
    from), but it authorizes nothing; the next rotation, signed by its root key, heals."""
    v1 = root_doc(k, 1, "root1", "rel1", ["root1"], T0)
    v2 = root_doc(k, 2, "root2", "rel2", ["root1", "root2"], T0)
    now = T0 + 2 * YEAR
    v = verifier(load_trusted_root(v1), now)
    assert v.update_root([v2]).version == 2
    with pytest.raises(VerificationError) as ei:
        v.verify(manifest(k, "rel2", now))
    assert ei.value.reason == "expired_root"
    v3 = root_doc(k, 3, "root2", "rel3", ["root2"], now)  # rotated from the expired v2
    assert v.update_root([v2, v3]).version == 3
    assert v.verify(manifest(k, "rel3", now)).sequence == 1


def test_replay_beats_expired_root(k):
    """A redelivered copy of what the device already runs is a replay, not a failure report."""
    root = load_trusted_root(root_doc(k, 1, "root1", "rel1", ["root1"], T0))
    payload = manifest(k, "rel1", T0 + YEAR - timedelta(days=1))
    v = verifier(root, T0 + YEAR - timedelta(hours=1))
    v.accept(v.verify(payload))
    v._now = T0 + YEAR + timedelta(hours=1)
    with pytest.raises(VerificationError) as ei:
        v.verify(payload)
    assert ei.value.reason == "replay"


def test_a_forged_candidate_does_not_block_the_real_rotation(k):
    v1 = load_trusted_root(root_doc(k, 1, "root1", "rel1", ["root1"], T0))
    forged = root_doc(k, 2, "root3", "rel3", ["root3"], T0)  # not signed by the trusted root
    real = root_doc(k, 2, "root1", "rel2", ["root1"], T0)
    assert update_root_chain(v1, [forged, b"garbage", real]).version == 2
    with pytest.raises(VerificationError) as ei:
        update_root_chain(v1, [forged])
    assert ei.value.reason == "unknown_key"


def test_check_expiry_on_request(k):
    v1 = root_doc(k, 1, "root1", "rel1", ["root1"], T0)
    with pytest.raises(VerificationError) as ei:
        load_trusted_root(v1, now=T0 + 2 * YEAR, check_expiry=True)
    assert ei.value.reason == "expired_root"
