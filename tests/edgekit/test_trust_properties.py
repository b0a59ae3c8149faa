"""Property-based: random and mutated manifests, envelopes and roots through the real parser and
verifier. The only outcomes allowed are a named refusal (VerificationError with a reason code)
or an acceptance of a document that is really validly signed and within every bound; any other
exception fails the property. Deterministic (derandomized, no example database) and bounded.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import timedelta
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.trust import (
    REASONS,
    Manifest,
    ManifestVerifier,
    Root,
    SigningKey,
    VerificationError,
    build_root,
    build_smoke_test,
    canonical_json,
    decode_tensor,
    dumps,
    is_safe_name,
    load_trusted_root,
    sign,
    sign_root,
    smoke_inputs,
    update_root_chain,
    verify_signature,
)
from edgekit.trust.fields import MAX_UINT63
from edgekit.trust.safejson import nesting_depth
from tests.edgekit.trustkit import NOW, SHA, signed_manifest
from tests.edgekit.trustkit import verifier as make_verifier

SHA_RE = re.compile(r"[0-9a-f]{64}")

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ROOT_KEY, RELEASE_KEY, OTHER_KEY = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
V1 = sign_root(build_root([ROOT_KEY], [RELEASE_KEY.public_hex], now=NOW), [ROOT_KEY])
TRUSTED = load_trusted_root(dumps(V1))


def valid_signed() -> dict[str, Any]:
    return signed_manifest(
        artifacts={
            "onnx": {"url": "http://x/a", "sha256": SHA, "size": 10, "file": "m.onnx", "precision": "fp32"},
            "tflite": {"url": "/b", "sha256": "cd" * 32, "size": 7, "file": "m.tflite", "precision": "int8"},
        },
        model_card={
            "name": "digits",
            "inputs": [{"name": "x", "shape": ["N", 2]}],
            "preprocessing": {"s": 0.5},
        },
        smoke_test=build_smoke_test(
            {"x": np.ones((1, 2), np.float32)}, {"y": np.arange(3, dtype=np.float32)}
        ),
    )


VALID_SIGNED = valid_signed()
VALID_PAYLOAD = dumps(sign(VALID_SIGNED, [RELEASE_KEY]))

# Values that sit on the bounds the verifier enforces, mixed into random JSON.
EDGE_VALUES = [
    "../../escape",
    "..",
    "/etc/passwd",
    "a\\b",
    "",
    "x" * 300,
    "AB" * 32,
    "ab" * 32,
    "\x00",
    "\ud800",
    "2026-06-02T00:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "file:///etc/passwd",
    -1,
    0,
    2**63 - 1,
    2**63,
    2**70,
    True,
    False,
    None,
    1e308,
    -0.0,
    [],
    {},
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
    | st.sampled_from(EDGE_VALUES)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=24,
)


def verifier() -> ManifestVerifier:
    return make_verifier(TRUSTED)


def outcome(raw: bytes | str) -> Manifest | None:
    """verify(), allowing only a named refusal; an acceptance is checked against every bound."""
    try:
        m = verifier().verify(raw)
    except VerificationError as e:
        assert e.reason in REASONS
        assert "Traceback" not in str(e) and "\n" not in e.detail
        return None
    assert_really_acceptable(m)
    return m


def assert_really_acceptable(m: Manifest) -> None:
    # Validly signed by the release key, checked independently of check_threshold.
    data = canonical_json(m.signed)
    assert any(
        s["keyid"] == RELEASE_KEY.keyid and verify_signature(RELEASE_KEY.public_hex, s["sig"], data)
        for s in m.envelope["signatures"]
    )
    assert (m.fleet, m.device) == ("f1", "dev-1")
    assert 4 < m.sequence <= MAX_UINT63
    assert m.expires_at > NOW + timedelta(minutes=1)
    assert is_safe_name(m.model)
    for key, art in m.artifacts.items():
        assert is_safe_name(key) and is_safe_name(art.file) and art.format == key
        assert SHA_RE.fullmatch(art.sha256) and 0 <= art.size <= 2**40
    if m.smoke_test is not None:  # what the device will decode after the download must decode
        smoke_inputs(m.smoke_test)
        for t in m.smoke_test["outputs"].values():
            decode_tensor(t)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


# Where a bound is enforced: drawn as often as any path at all, so 200 examples reach each one.
MANIFEST_HOT_PATHS = [
    ("model",),
    ("sequence",),
    ("version",),
    ("expires_at",),
    ("artifacts", "onnx"),
    ("artifacts", "onnx", "file"),
    ("artifacts", "onnx", "sha256"),
    ("artifacts", "onnx", "size"),
    ("artifacts", "onnx", "url"),
    ("smoke_test", "inputs", "x", "shape"),
    ("smoke_test", "inputs", "x", "dtype"),
    ("smoke_test", "tolerance", "default", "atol"),
]
ROOT_HOT_PATHS = [("version",), ("expires",), ("keys",), ("roles", "root", "threshold"), ("roles", "release")]


def mutate(doc: Any, data: st.DataObject, hot: list[tuple] = MANIFEST_HOT_PATHS) -> Any:
    """One random structural mutation in `doc`: replace (often by a boundary value), delete,
    add, or nest, at a random path or one where the verifier enforces a bound."""
    doc = copy.deepcopy(doc)
    candidates = paths(doc)
    hot_here = [p for p in hot if p in candidates]
    anywhere = st.sampled_from(candidates)
    path = data.draw(st.sampled_from(hot_here) | anywhere if hot_here else anywhere, label="path")
    op = data.draw(st.sampled_from(["replace", "replace", "delete", "add", "nest"]), label="op")
    values = st.sampled_from(EDGE_VALUES) | json_values
    if not path:
        return data.draw(values) if op == "replace" else [doc] * (op == "nest") or doc
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if op == "replace":
        parent[last] = data.draw(values, label="value")
    elif op == "delete":
        del parent[last]
    elif op == "add" and isinstance(parent, dict):
        parent[data.draw(st.text(max_size=12), label="key")] = data.draw(json_values, label="value")
    elif op == "add":
        parent.insert(last, data.draw(json_values, label="value"))
    else:
        value = parent[last]
        for _ in range(data.draw(st.integers(1, 200), label="depth")):
            value = [value]
        parent[last] = value
    return doc


@PROPERTY
@given(st.binary(max_size=2048))
def test_random_bytes_are_refused(raw):
    assert outcome(raw) is None


@PROPERTY
@given(json_values)
def test_random_json_is_refused(value):
    raw = json.dumps(value).encode()
    assert outcome(raw) is None
    assert outcome(json.dumps({"signed": value, "signatures": []}).encode()) is None


@PROPERTY
@given(st.data())
def test_mutated_bytes_of_a_signed_manifest(data):
    raw = bytearray(VALID_PAYLOAD)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        pos = data.draw(st.integers(0, len(raw)), label="pos")
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "nest"]), label="op")
        if op == "flip" and pos < len(raw):
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del raw[pos : pos + data.draw(st.integers(1, 8))]
        else:
            n = data.draw(st.integers(1, 5000), label="depth")
            raw[pos:pos] = b"[" * n + b"0" + b"]" * n
    m = outcome(bytes(raw))
    if m is not None:  # only a re-encoding of the very document that was signed
        assert canonical_json(m.signed) == canonical_json(VALID_SIGNED)


@PROPERTY
@given(st.data(), st.integers(1, 100_000))
def test_deep_nesting_anywhere(data, depth):
    """Any value of a signed manifest replaced by `depth` nested arrays (built as text: the
    stdlib encoder itself cannot write that deep)."""
    env = json.loads(VALID_PAYLOAD)
    path = data.draw(st.sampled_from(paths(env)[1:]), label="path")
    parent = env
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = "NEST-HERE"
    raw = json.dumps(env).encode().replace(b'"NEST-HERE"', b"[" * depth + b"0" + b"]" * depth)
    assert outcome(raw) is None


@PROPERTY
@given(st.data())
def test_mutated_fields_without_resigning(data):
    env = mutate(json.loads(VALID_PAYLOAD), data, [("signed", *p) for p in MANIFEST_HOT_PATHS])
    m = outcome(json.dumps(env).encode()) if _serializable(env) else None
    if m is not None:
        assert canonical_json(m.signed) == canonical_json(VALID_SIGNED)


@PROPERTY
@given(st.data())
def test_mutated_fields_signed_by_the_release_key(data):
    """A leaked release key or a buggy fleet signs whatever it likes: the typed checks hold."""
    signed = mutate(VALID_SIGNED, data)
    if not isinstance(signed, dict) or not _serializable(signed):
        return
    outcome(dumps(sign(signed, [RELEASE_KEY])))


def test_every_boundary_value_at_every_enforced_field():
    """The exhaustive companion of the random mutations: each boundary value at each field
    that has a bound, signed by the release key, deleted, and nested."""
    for path in MANIFEST_HOT_PATHS:
        for value in [*EDGE_VALUES, 2**63 - 2, -(2**63), 2**64, "ab" * 32 + "0", "m.onnx/.."]:
            signed = copy.deepcopy(VALID_SIGNED)
            parent = signed
            for p in path[:-1]:
                parent = parent[p]
            parent[path[-1]] = value
            if _serializable(signed):
                outcome(dumps(sign(signed, [RELEASE_KEY])))
        del parent[path[-1]]
        outcome(dumps(sign(signed, [RELEASE_KEY])))


@PROPERTY
@given(st.data())
def test_mutated_signature_lists(data):
    env = json.loads(VALID_PAYLOAD)
    sigs = env["signatures"]
    other = sign(VALID_SIGNED, [OTHER_KEY])["signatures"]
    choice = data.draw(st.sampled_from(["dup", "drop", "other", "garbage", "keyid", "many"]))
    if choice == "dup":
        env["signatures"] = sigs * data.draw(st.integers(2, 40))
    elif choice == "drop":
        env["signatures"] = []
    elif choice == "other":
        env["signatures"] = other + data.draw(st.sampled_from([[], sigs]))
    elif choice == "garbage":
        env["signatures"] = [{"keyid": RELEASE_KEY.keyid, "sig": data.draw(st.text(max_size=140))}]
    elif choice == "keyid":
        env["signatures"] = [{"keyid": data.draw(st.text(max_size=70)), "sig": sigs[0]["sig"]}]
    else:
        entry = st.fixed_dictionaries({"keyid": st.text(max_size=8), "sig": st.text(max_size=8)}) | scalars
        env["signatures"] = data.draw(st.lists(entry, max_size=40))  # also past MAX_SIGNATURES
    if _serializable(env):
        outcome(json.dumps(env).encode())


V2_SIGNED = build_root([ROOT_KEY], [OTHER_KEY.public_hex], version=2, now=NOW)


@PROPERTY
@given(st.data(), st.booleans())
def test_mutated_roots_through_the_chain(data, resign):
    signed = mutate(V2_SIGNED, data, ROOT_HOT_PATHS)
    if not isinstance(signed, dict) or not _serializable(signed):
        return
    original_signatures = sign_root(V2_SIGNED, [ROOT_KEY])["signatures"]
    env = sign_root(signed, [ROOT_KEY]) if resign else {"signed": signed, "signatures": original_signatures}
    try:
        root = update_root_chain(TRUSTED, [dumps(env), json.dumps(env).encode()])
    except VerificationError as e:
        assert e.reason in REASONS
        return
    assert isinstance(root, Root)
    if root.version == 2:  # accepted: consistent, and signed by the trusted root's key
        TRUSTED.check(root.envelope, "root")
        for name in ("root", "release"):
            keyids, threshold = root.role(name)
            assert 1 <= threshold <= len(set(keyids)) and set(keyids) <= set(root.keys)
        root.is_expired(NOW)


@PROPERTY
@given(json_values)
def test_nesting_depth_matches_the_parsed_document(value):
    def depth(v: Any) -> int:
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        return 0

    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
        assert nesting_depth(text.encode("utf-8", "surrogatepass"), stop_above=10**6) == depth(value)


def _serializable(doc: Any) -> bool:
    """Whether a test document can be signed at all (canonical JSON refuses lone surrogates);
    such documents are still fed raw to the verifier by the byte-level properties."""
    try:
        canonical_json(doc)
    except ValueError:
        return False
    return True
