"""Every refusal reason of the verifier, each with a crafted document."""

from __future__ import annotations

import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from edgekit.trust import (
    SigningKey,
    build_root,
    build_smoke_test,
    canonical_json,
    check_smoke_outputs,
    dumps,
    load_trusted_root,
    sign,
    sign_root,
    smoke_inputs,
    update_root,
    verify_artifact,
)
from tests.edgekit.trustkit import NOW, SHA, new_keys, refusal, signed_manifest, trusted_root, verifier


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return new_keys("root", "release", "release2", "other", "root2")


@pytest.fixture(scope="module")
def root(keys):
    return trusted_root(keys["root"], [keys["release"]])


def reason(fn) -> str:
    return refusal(fn).reason


def test_canonical_json_is_sorted_compact_utf8():
    assert canonical_json({"b": 1, "a": ["é", True]}) == '{"a":["é",true],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_valid_manifest_accepted(root, keys):
    m = verifier(root).verify(dumps(sign(signed_manifest(), [keys["release"]])))
    assert (m.model, m.version, m.sequence, m.device, m.rollout) == ("digits", "1.0.0", 5, "dev-1", "r1")
    assert m.artifacts["onnx"].sha256 == SHA
    assert m.model_card["preprocessing"]["scale"] == 0.5


def test_malformed(root, keys):
    v = verifier(root)
    assert reason(lambda: v.verify(b"{not json")) == "malformed"
    assert reason(lambda: v.verify(b"[]")) == "malformed"
    assert reason(lambda: v.verify(json.dumps({"signed": {}}).encode())) == "malformed"
    # Correctly signed but missing a field: caught after the signature check.
    s = signed_manifest()
    del s["sequence"]
    assert reason(lambda: v.verify(dumps(sign(s, [keys["release"]])))) == "malformed"
    s = signed_manifest()
    s["sequence"] = True
    assert reason(lambda: v.verify(dumps(sign(s, [keys["release"]])))) == "malformed"


def test_oversized(root, keys):
    s = signed_manifest(model_card={"name": "x", "blob": "a" * 2_000_000})
    assert reason(lambda: verifier(root).verify(dumps(sign(s, [keys["release"]])))) == "oversized"


def test_bad_signature_tampered_and_missing(root, keys):
    env = sign(signed_manifest(), [keys["release"]])
    env["signed"]["version"] = "6.6.6"  # tampered after signing
    assert reason(lambda: verifier(root).verify(dumps(env))) == "bad_signature"
    env = sign(signed_manifest(), [])
    assert reason(lambda: verifier(root).verify(dumps(env))) == "bad_signature"


def test_unknown_key(root, keys):
    env = sign(signed_manifest(), [keys["other"]])
    assert reason(lambda: verifier(root).verify(dumps(env))) == "unknown_key"
    # The root key may sign roots, not releases.
    env = sign(signed_manifest(), [keys["root"]])
    assert reason(lambda: verifier(root).verify(dumps(env))) == "unknown_key"


def test_threshold(keys):
    signed = build_root(
        [keys["root"]],
        [keys["release"].public_hex, keys["release2"].public_hex],
        release_threshold=2,
        now=NOW,
    )
    root2 = load_trusted_root(dumps(sign_root(signed, [keys["root"]])), now=NOW)
    one = sign(signed_manifest(), [keys["release"]])
    assert reason(lambda: verifier(root2).verify(dumps(one))) == "threshold"
    # The same key twice counts once.
    twice = sign(signed_manifest(), [keys["release"], keys["release"]])
    assert reason(lambda: verifier(root2).verify(dumps(twice))) == "threshold"
    both = sign(signed_manifest(), [keys["release"], keys["release2"]])
    assert verifier(root2).verify(dumps(both)).sequence == 5


def test_expired(root, keys):
    env = sign(signed_manifest(expires_in=timedelta(hours=1)), [keys["release"]])
    v = verifier(root, now=NOW + timedelta(hours=2))
    assert reason(lambda: v.verify(dumps(env))) == "expired"


def test_replay(root, keys):
    env = dumps(sign(signed_manifest(sequence=5), [keys["release"]]))
    v = verifier(root, last_sequence=4)
    v.accept(v.verify(env))
    assert reason(lambda: v.verify(env)) == "replay"
    older = dumps(sign(signed_manifest(sequence=3), [keys["release"]]))
    assert reason(lambda: v.verify(older)) == "replay"


def test_wrong_fleet_and_device(root, keys):
    assert reason(
        lambda: verifier(root).verify(dumps(sign(signed_manifest(fleet="f2"), [keys["release"]])))
    ) == ("wrong_fleet")
    env = dumps(sign(signed_manifest(device="dev-2"), [keys["release"]]))
    assert reason(lambda: verifier(root).verify(env)) == "wrong_device"


def test_wrong_type_root_is_not_a_manifest(root, keys):
    root_env = sign(build_root([keys["root"]], [keys["release"].public_hex], now=NOW), [keys["release"]])
    assert reason(lambda: verifier(root).verify(dumps(root_env))) == "wrong_type"


def test_root_rotation_chain(root, keys):
    # v2: new release key, same root key, signed by old root (== new root here).
    v2 = sign_root(
        build_root([keys["root"]], [keys["release2"].public_hex], version=2, now=NOW), [keys["root"]]
    )
    # v3: new root key too: signed by the old root key AND the new one.
    v3 = sign_root(
        build_root([keys["root2"]], [keys["release2"].public_hex], version=3, now=NOW),
        [keys["root"], keys["root2"]],
    )
    v = verifier(root)
    new = v.update_root([dumps(v3), dumps(v2)])
    assert new.version == 3
    # The old release key is revoked: unknown_key. The new one works.
    assert reason(lambda: v.verify(dumps(sign(signed_manifest(), [keys["release"]])))) == "unknown_key"
    assert v.verify(dumps(sign(signed_manifest(), [keys["release2"]]))).sequence == 5


def test_root_rotation_refusals(root, keys):
    # Skipping a version.
    v3 = sign_root(
        build_root([keys["root"]], [keys["release2"].public_hex], version=3, now=NOW), [keys["root"]]
    )
    assert reason(lambda: update_root(root, dumps(v3))) == "root_version"
    # Signed only by the new root key: the old root did not approve it.
    v2 = sign_root(
        build_root([keys["root2"]], [keys["release2"].public_hex], version=2, now=NOW), [keys["root2"]]
    )
    assert reason(lambda: update_root(root, dumps(v2))) == "unknown_key"
    # Signed only by the old root key: the new root role's own threshold is not met.
    v2 = sign_root(
        build_root([keys["root2"]], [keys["release2"].public_hex], version=2, now=NOW), [keys["root"]]
    )
    assert reason(lambda: update_root(root, dumps(v2))) == "unknown_key"
    # Signed by an attacker with a self-consistent root.
    v2 = sign_root(
        build_root([keys["other"]], [keys["other"].public_hex], version=2, now=NOW), [keys["other"]]
    )
    assert reason(lambda: update_root(root, dumps(v2))) == "unknown_key"
    # A chain ending in an expired root is followed (TUF); what it authorizes is refused
    # (tests/edgekit/test_root_expiry.py).


def test_trusted_root_checks(keys):
    env = sign_root(build_root([keys["root"]], [keys["release"].public_hex], now=NOW), [keys["other"]])
    assert reason(lambda: load_trusted_root(dumps(env), now=NOW)) == "unknown_key"
    env = sign_root(build_root([keys["root"]], [keys["release"].public_hex], now=NOW), [keys["root"]])
    later = NOW + timedelta(days=400)
    assert load_trusted_root(dumps(env), now=later).version == 1  # expired enrolment root: loads
    assert reason(lambda: load_trusted_root(dumps(env), now=later, check_expiry=True)) == "expired_root"


def test_verify_artifact(tmp_path: Path):
    import hashlib

    p = tmp_path / "a.bin"
    p.write_bytes(b"0123456789")
    good = hashlib.sha256(b"0123456789").hexdigest()
    verify_artifact(p, 10, good)
    assert reason(lambda: verify_artifact(p, 11, good)) == "size_mismatch"
    assert reason(lambda: verify_artifact(p, 10, "00" * 32)) == "sha256_mismatch"


def test_key_file_permissions(tmp_path: Path):
    k = SigningKey.generate()
    path = tmp_path / "keys" / "release.pem"
    k.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert SigningKey.load(path).keyid == k.keyid


def test_smoke_test_tolerance():
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    y = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    smoke = build_smoke_test({"x": x}, {"y": y})
    assert np.array_equal(smoke_inputs(smoke)["x"], x)
    assert check_smoke_outputs(smoke, {"y": y + 1e-5}).ok
    assert check_smoke_outputs(smoke, {"output_0": y * 1.01}, precision="int8").ok  # renamed, scaled
    assert not check_smoke_outputs(smoke, {"y": -y}).ok
    assert not check_smoke_outputs(smoke, {"y": y.reshape(3, 1)}).ok
    # The converters' precision labels select their tolerance row; fp32 stays strict.
    noisy = y + np.array([[0.05, -0.05, 0.05]], np.float32)  # int8-sized error: cosine ~0.9997
    for label in ("int8-static", "full-int8", "dynamic-range", "w8-linear", "uint8-weights"):
        assert check_smoke_outputs(smoke, {"y": noisy}, precision=label).ok, label
    assert not check_smoke_outputs(smoke, {"y": noisy}, precision="fp32").ok
