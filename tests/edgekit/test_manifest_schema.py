"""The typed manifest: forward compatible (unknown fields ignored) and validated (safe names,
exact digests, bounded numbers, bounded nesting), through the real signer and verifier."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edgekit.trust import (
    SigningKey,
    VerificationError,
    build_manifest,
    build_smoke_test,
    check_safe_name,
    dumps,
    is_safe_name,
    sign,
)
from edgekit.trust.safejson import MAX_JSON_DEPTH
from tests.edgekit.trustkit import SHA, new_keys, refusal, signed_manifest, trusted_root
from tests.edgekit.trustkit import verifier as make_verifier


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return new_keys("root", "release")


@pytest.fixture(scope="module")
def verifier(keys):
    root = trusted_root(keys["root"], [keys["release"]])
    return lambda: make_verifier(root)


def valid_signed() -> dict[str, Any]:
    return signed_manifest(
        model_card={"name": "digits", "inputs": [], "outputs": []},
        smoke_test=build_smoke_test({"x": np.ones((1, 2), np.float32)}, {"y": np.ones((1, 3), np.float32)}),
        rollout=None,
    )


def signed_payload(keys, signed: dict[str, Any]) -> bytes:
    """Sign whatever `signed` says, bypassing build_manifest's own validation: a leaked release
    key or a buggy fleet can sign anything, and the agent must still refuse it."""
    return dumps(sign(signed, [keys["release"]]))


def test_unknown_fields_are_ignored_top_level_and_per_artifact(keys, verifier):
    """Regression: one extra artifact field was a TypeError (`rolled_back:internal`)."""
    s = valid_signed()
    s["delta_of"] = {"version": "0.9.0", "patch": "bsdiff"}  # a newer fleet's top-level field
    s["artifacts"]["onnx"]["compression"] = "zstd"  # and per-artifact field
    s["smoke_test"]["inputs"]["x"]["layout"] = "NC"
    m = verifier().verify(signed_payload(keys, s))
    art = m.artifacts["onnx"]
    assert (art.format, art.file, art.sha256, art.size) == ("onnx", "m.onnx", SHA, 10)
    assert m.body.model == "digits" and m.sequence == 5
    assert m.delta_of == {"version": "0.9.0", "patch": "bsdiff"}  # still readable, untyped
    assert m.envelope["signed"] is not None and m.signed["artifacts"]["onnx"]["compression"] == "zstd"


@pytest.mark.parametrize(
    "field, value",
    [
        ("model", "../../escape"),
        ("model", "/etc"),
        ("model", "a/b"),
        ("model", "a\\b"),
        ("model", ".."),
        ("model", ".hidden"),
        ("model", "x" * 129),
        ("model", ""),
        ("model", "C:evil"),
        ("file", "../../escape"),
        ("file", "/abs/m.onnx"),
        ("file", "..\\m.onnx"),
        ("file", "m..onnx"),
        ("file", "m.onnx\n"),
        ("file", "modèle.onnx"),
        ("artifact_key", "../onnx"),
    ],
)
def test_unsafe_names_are_malformed(keys, verifier, field, value):
    """Regression: `../../escape` passed the verifier and became a path on the device."""
    s = valid_signed()
    if field == "model":
        s["model"] = value
    elif field == "file":
        s["artifacts"]["onnx"]["file"] = value
    else:
        s["artifacts"] = {value: s["artifacts"]["onnx"]}
    e = refusal(lambda: verifier().verify(signed_payload(keys, s)))
    assert e.reason == "malformed"
    assert "\n" not in e.detail  # an attacker's newline never splits a log line


@pytest.mark.parametrize(
    "sha", ["AB" * 32, "ab" * 31, "ab" * 33, "zz" * 32, "ab" * 32 + "\n", 123, None, "0x" + "a" * 62]
)
def test_sha256_is_exactly_64_lowercase_hex(keys, verifier, sha):
    s = valid_signed()
    s["artifacts"]["onnx"]["sha256"] = sha
    assert refusal(lambda: verifier().verify(signed_payload(keys, s))).reason == "malformed"


@pytest.mark.parametrize(
    "path, value",
    [
        (("sequence",), 2**63),
        (("sequence",), 2**70),
        (("sequence",), -1),
        (("sequence",), True),
        (("sequence",), "6"),
        (("sequence",), 6.0),
        (("artifacts", "onnx", "size"), -1),
        (("artifacts", "onnx", "size"), 2**41),
        (("artifacts", "onnx", "size"), False),
        (("version",), ""),
        (("version",), "1" * 129),
        (("version",), 1),
        (("device",), "dev-1\x00"),
        (("artifacts", "onnx", "url"), "file:///etc/passwd"),
        (("artifacts", "onnx", "url"), "http://x/a b"),
        (("expires_at",), "next tuesday"),
        (("expires_at",), "2026-06-02T00:00:00"),  # no timezone
        (("expires_at",), "0001-01-01T00:00:00+01:00"),  # no UTC equivalent
        (("artifacts",), {}),
        (("model_card",), []),
    ],
)
def test_bounds_and_types(keys, verifier, path, value):
    s = valid_signed()
    target = s
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    assert refusal(lambda: verifier().verify(signed_payload(keys, s))).reason == "malformed"


def test_largest_sequence_is_accepted(keys, verifier):
    s = valid_signed()
    s["sequence"] = 2**63 - 1
    assert verifier().verify(signed_payload(keys, s)).sequence == 2**63 - 1


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.update(dtype="object"),
        lambda t: t.update(shape=[1, 3]),  # 8 bytes of data, 12 needed
        lambda t: t.update(shape=[2**62, 4]),
        lambda t: t.update(shape=[1] * 33),
        lambda t: t.update(data_b64="not base64!"),
    ],
)
def test_smoke_tensors_must_decode(keys, verifier, mutate):
    s = valid_signed()
    mutate(s["smoke_test"]["inputs"]["x"])
    assert refusal(lambda: verifier().verify(signed_payload(keys, s))).reason == "malformed"


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 10_000, 400_000])
def test_deep_nesting_is_malformed_not_recursion_error(verifier, depth):
    """Regression: deeply nested JSON raised RecursionError out of the verifier."""
    raw = '{"signed":{"_type":"manifest","model_card":' + _nested(depth) + '},"signatures":[]}'
    e = refusal(lambda: verifier().verify(raw.encode()))
    assert e.reason == "malformed" and "nested" in e.detail


def test_nesting_inside_strings_does_not_count(keys, verifier):
    s = valid_signed()
    s["model_card"]["description"] = "[" * 5000 + "{" * 5000 + '\\"' + "]"
    assert verifier().verify(signed_payload(keys, s)).model == "digits"


def test_deep_but_signed_model_card_is_refused(keys, verifier):
    s = valid_signed()
    deep: Any = 1
    for _ in range(MAX_JSON_DEPTH):
        deep = [deep]
    s["model_card"]["nested"] = deep
    assert refusal(lambda: verifier().verify(signed_payload(keys, s))).reason == "malformed"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"signed": {"x": NaN}, "signatures": []}',
        b'{"signed": {"x": 1e999}, "signatures": []}',
        b'{"signed": {"x": ' + b"9" * 5000 + b"}, " + b'"signatures": []}',
        b'{"signed": {"x": "\\ud800"}, "signatures": []}',
        b'{"signed": {}, "signatures": [], "extra": 1}',
        b'{"signed": {}, "signatures": [' + b",".join([b'{"keyid":"a","sig":"b"}'] * 33) + b"]}",
        b'{"signed": {}, "signatures": [{"keyid": "' + b"a" * 300 + b'", "sig": "b"}]}',
        b"\xff\xfe",
    ],
)
def test_hostile_json_is_malformed(verifier, raw):
    assert refusal(lambda: verifier().verify(raw)).reason == "malformed"


def test_fleet_cannot_sign_what_agents_refuse():
    """build_manifest applies the agents' rules, so a bad name fails at publish, not on devices."""
    with pytest.raises(VerificationError) as ei:
        build_manifest(
            fleet="f1",
            device="dev-1",
            model="../x",
            version="1",
            sequence=1,
            artifacts={"onnx": {"url": "u", "sha256": SHA, "size": 1, "file": "m.onnx", "precision": "fp32"}},
            model_card={},
        )
    assert ei.value.reason == "malformed"


def test_safe_name_rule():
    ok = ["digits", "m.onnx", "model_full_integer_quant.tflite", "tiny-v2.tfjs.tar", "A", "x" * 128]
    bad = ["", ".", "..", "a..b", "-x", "_x", ".x", "a/b", "a\\b", "a b", "x" * 129, "é", "a\x00", 5, None]
    assert all(is_safe_name(n) for n in ok)
    assert not any(is_safe_name(n) for n in bad)
    with pytest.raises(ValueError, match="invalid model name"):
        check_safe_name("model name", "../x")


def test_refusal_detail_never_echoes_a_huge_value(keys, verifier):
    s = valid_signed()
    s["artifacts"] = {"k" * 100_000: s["artifacts"]["onnx"]}
    e = refusal(lambda: verifier().verify(signed_payload(keys, s)))
    assert e.reason == "malformed" and len(str(e)) < 1000
    json.dumps(e.detail)  # plain text, serializable for the status report
