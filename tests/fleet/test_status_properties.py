"""Property-based suite for fleet status ingestion (issue 10): random and mutated payloads on
random and real topics, fed to the real ingestion path, only ever get a named refusal or are
accepted; the server stays up and keeps recording valid reports afterwards.

Three layers, fastest first: the decoder alone (many examples), the running server through the
callback paho invokes for every message (`FleetServer._on_message`), and the running server over
a real Mosquitto. Examples are derandomized (the same in CI and locally) and bounded in number."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit import topics
from edgekit.protocol import STATES, Online, ProtocolError, Status
from fleet import ingest
from tests.fleet.conftest import FLEET
from tests.fleet.hardening_support import device_users, stack
from tests.fleet.helpers import wait_for
from tests.support import mosquitto

pytestmark = pytest.mark.timeout(300)

PROPS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
OUTCOMES = ingest.REFUSALS | {ingest.ACCEPTED, ingest.EMPTY}
DEVICES = ("dev-000", "dev-001", "dev-002")

# ---- strategies ---------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([2**63 - 1, 2**63, -1, 0]),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(list(STATES)),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ("device", "state", "model", "version", "sequence", "rollout", "reason", "labels", "ts", "online")


@st.composite
def valid_doc(draw: Any, device: str) -> dict[str, Any]:
    """A message as an agent sends it (valid whenever `device` is a valid id)."""
    if draw(st.booleans()):
        return {
            "device": device,
            "online": draw(st.booleans()),
            "labels": {"site": "x"},
            "agent_version": "1.0",
        }
    return {
        "device": device,
        "state": draw(st.sampled_from(STATES)),
        "model": draw(st.sampled_from([None, "tiny"])),
        "version": draw(st.sampled_from([None, "1.0", "2.0"])),
        "sequence": draw(st.one_of(st.none(), st.integers(0, 2**63 - 1))),
        "rollout": None,
        "reason": None,
        "labels": {"site": "x"},
        "heartbeat": draw(st.booleans()),
    }


@st.composite
def mutated(draw: Any, device: str) -> bytes:
    """A valid message, then a few edits: a field set to any JSON value, dropped, or added; the
    whole thing wrapped in deep nesting; or its bytes truncated or flipped."""
    doc = draw(valid_doc(device))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["set", "drop", "add"]))
        key = draw(st.sampled_from(FIELDS))
        if op == "set":
            doc[key] = draw(json_values)
        elif op == "drop":
            doc.pop(key, None)
        else:
            doc[draw(st.text(max_size=10))] = draw(json_values)
    raw = json.dumps(doc).encode()
    shape = draw(st.sampled_from(["as_is", "nest", "truncate", "flip", "pad"]))
    if shape == "nest":
        n = draw(st.integers(1, 5000))
        raw = b'{"device":"%s","state":"idle","x":' % device.encode() + b"[" * n + b"]" * n + b"}"
    elif shape == "truncate" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif shape == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1 :]
    elif shape == "pad":
        raw = raw[:-1] + b',"pad":"' + b"x" * draw(st.sampled_from([10, 70_000])) + b'"}'
    return raw


mqtt_level = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Cn"), blacklist_characters="/+#"),
    min_size=1,
    max_size=40,
)
known = st.sampled_from(DEVICES)
odd = st.one_of(mqtt_level, st.just("x" * 129), st.just("dev-000\n"))
devices = st.integers(0, 9).flatmap(lambda i: known if i < 7 else odd)  # mostly real ids
kinds = st.sampled_from([topics.STATUS] * 4 + [topics.ONLINE] * 2 + ["desired", "other"])


@st.composite
def message(draw: Any) -> tuple[str, str, bytes]:
    device, kind = draw(devices), draw(kinds)
    payload = draw(st.one_of(mutated(device), st.binary(max_size=200), st.just(b"")))
    return device, kind, payload


@st.composite
def any_topic(draw: Any) -> str:
    device, kind = draw(devices), draw(kinds)
    return draw(
        st.one_of(
            st.just(f"edgekit/{FLEET}/devices/{device}/{kind}"),
            st.just(f"edgekit/other-fleet/devices/{device}/{kind}"),
            st.just(f"edgekit/{FLEET}/roots"),
            st.text(max_size=60),
        )
    )


# ---- the decoder alone ----------------------------------------------------------------------------


@settings(PROPS, max_examples=400)
@given(message())
def test_decode_only_accepts_or_names_a_refusal(msg):
    device, kind, payload = msg
    try:
        decoded = ingest.decode(device, kind, payload)
    except ProtocolError as e:
        assert e.reason in ingest.REFUSALS, e
        return
    assert isinstance(decoded, Status | Online) and decoded.device == device
    assert topics.valid_name(decoded.device)
    assert decoded.to_json()  # an accepted message serializes again, within the schema


# ---- the running server ---------------------------------------------------------------------------


needs_mosquitto = pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed")


def _outcome_of(srv: Any, before: dict[str, int]) -> str:
    after = srv.outcomes.snapshot()
    changed = [k for k in after if after[k] != before.get(k, 0)]
    assert len(changed) == 1, (before, after)
    return changed[0]


def _still_serving(st_: Any) -> None:
    """A valid report from a real device, over the broker, is recorded after the storm."""
    srv = st_.server
    assert srv._thread is not None and srv._thread.is_alive()
    with st_.sender("dev-009") as s:
        s.publish(
            topics.status(FLEET, "dev-009"),
            Status(device="dev-009", state="failed", reason="probe").to_json(),
        )
    wait_for(
        lambda: any(d["id"] == "dev-009" and d["reason"] == "probe" for d in srv.devices.list()), 30, "probe"
    )
    with st_.admin() as http:
        assert http.get("/api/health").json()["ok"] is True


@needs_mosquitto
def test_server_ingestion_callback_survives_random_messages(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with stack(tmp_path, device_users(10)) as st_:
        srv = st_.server

        @settings(PROPS, max_examples=150)
        @given(any_topic(), st.one_of(mutated("dev-001"), st.binary(max_size=100)))
        def feed(topic: str, payload: bytes) -> None:
            before = srv.outcomes.snapshot()
            n = sum(before.values())
            srv._on_message(topic, payload)  # what paho's thread calls for each message
            wait_for(lambda: srv.outcomes.total() > n, 10, "the message's outcome")
            assert _outcome_of(srv, before) in OUTCOMES

        feed()
        assert srv.outcomes.snapshot().get(ingest.INTERNAL, 0) == 0
        _still_serving(st_)
    assert "Traceback" not in caplog.text  # refusals are one named line each


@needs_mosquitto
def test_server_over_mqtt_survives_random_messages(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with stack(tmp_path, device_users(10)) as st_:
        srv = st_.server
        with st_.sender() as s:

            @settings(PROPS, max_examples=60)
            @given(message().filter(lambda m: m[1] in (topics.STATUS, topics.ONLINE) and m[0].isprintable()))
            def feed(msg: tuple[str, str, bytes]) -> None:
                device, kind, payload = msg
                before = srv.outcomes.snapshot()
                n = sum(before.values())
                s.publish(f"edgekit/{FLEET}/devices/{device}/{kind}", payload)
                wait_for(lambda: srv.outcomes.total() > n, 10, "the message's outcome")
                assert _outcome_of(srv, before) in OUTCOMES

            feed()
        assert srv.outcomes.snapshot().get(ingest.INTERNAL, 0) == 0
        _still_serving(st_)
    assert "Traceback" not in caplog.text  # refusals are one named line each
