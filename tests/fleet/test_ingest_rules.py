"""The pure decisions and the schema behind fleet ingestion hardening (issue 10): bounds of
the status schema, the topic's device id, sequence exhaustion, and offered-only `active`."""

from __future__ import annotations

import json
import logging

import pytest

from edgekit import topics
from edgekit.protocol import MAX_SEQUENCE, ProtocolError, Status
from fleet import ingest
from fleet.offers import NOT_OFFERED, active_refusal
from fleet.rollouts import INVALID_DEVICE_ID, SEQUENCE_EXHAUSTED, dispatch_refusal, next_sequence
from tests.fleet.conftest import FLEET


def status(device: str, state: str = "idle", **fields: object) -> dict[str, object]:
    return {"device": device, "state": state, **fields}


def test_status_schema_bounds():
    ok = Status(device="d", state="active", model="m", version="1", sequence=MAX_SEQUENCE)
    assert Status.from_json(ok.to_json()).sequence == MAX_SEQUENCE
    assert Status.from_json(b'{"device":"d","state":"idle","future":{"x":[1,2]}}').state == "idle"
    cases = {
        "too_large": b'{"device":"d","state":"idle","pad":"' + b"x" * 70_000 + b'"}',
        "too_deep": b"[" * 17 + b"]" * 17,
        "not_json": b'{"device":"d","state":"idle","sequence":' + b"9" * 5000 + b"}",
        "not_object": b'"status"',
        "invalid_status": json.dumps({"device": "d", "state": "idle", "sequence": MAX_SEQUENCE + 1}).encode(),
    }
    for reason, raw in cases.items():
        with pytest.raises(ProtocolError) as e:
            Status.from_json(raw)
        assert e.value.reason == reason, (reason, e.value)
    # brackets inside strings are text, not nesting
    assert Status.from_json(json.dumps({"device": "d", "state": "idle", "reason": "[" * 500}).encode())


def test_decode_checks_the_topic_device():
    with pytest.raises(ProtocolError) as e:
        ingest.decode("dev-1\n", "status", json.dumps(status("dev-1\n")).encode())
    assert e.value.reason == "invalid_device_id"  # "$" in a regex let a trailing newline through
    with pytest.raises(ProtocolError) as e:
        ingest.decode("dev-1", "status", json.dumps(status("dev-2")).encode())
    assert e.value.reason == "device_mismatch"
    with pytest.raises(ValueError):
        topics.status(FLEET, "dev-1\n")


def test_sequence_and_dispatch_decisions():
    assert next_sequence(None, None) == 1
    assert next_sequence(7, 3) == 8 and next_sequence(3, 7) == 8
    assert next_sequence(MAX_SEQUENCE - 1, None) == MAX_SEQUENCE
    assert next_sequence(0, MAX_SEQUENCE) is None
    assert dispatch_refusal("dev-1", 5) is None
    assert dispatch_refusal("bad id", 5) == INVALID_DEVICE_ID
    assert dispatch_refusal("dev-1", None) == SEQUENCE_EXHAUSTED


def test_active_decision():
    v1, v2 = ("m", "1"), ("m", "2")
    assert active_refusal(v1, None, offered=False, ever_offered=False) is None  # baseline
    assert active_refusal(v1, v1, offered=False, ever_offered=True) is None  # heartbeat
    assert active_refusal(v2, v1, offered=True, ever_offered=True) is None
    assert active_refusal(v2, v1, offered=False, ever_offered=True) == NOT_OFFERED
    assert active_refusal(v2, None, offered=False, ever_offered=True) == NOT_OFFERED


def test_a_topic_that_is_not_utf8_is_dropped_without_a_traceback(caplog):
    """paho decodes the topic lazily and raises UnicodeDecodeError; not every broker checks."""
    import paho.mqtt.client as mqtt

    from fleet.mqtt import MqttLink

    got: list[tuple[str, bytes]] = []
    link = MqttLink({"client_id": "t", "host": "127.0.0.1", "port": 1}, lambda t, p: got.append((t, p)), [])
    bad = mqtt.MQTTMessage(topic=b"edgekit/f1/devices/\xff/status")
    good = mqtt.MQTTMessage(topic=topics.status(FLEET, "dev-1").encode())
    caplog.set_level(logging.INFO)
    link._message_cb(link.client, None, bad)  # what paho's network thread calls
    link._message_cb(link.client, None, good)
    assert [t for t, _ in got] == [topics.status(FLEET, "dev-1")]
    assert "not UTF-8" in caplog.text and "Traceback" not in caplog.text
