from __future__ import annotations

import json

import pytest

from edgekit import topics
from edgekit.protocol import Online, ProtocolError, Status, last_will


def test_topics_roundtrip():
    t = topics.desired("f1", "dev-1")
    assert t == "edgekit/f1/devices/dev-1/desired"
    assert topics.parse(topics.status("f1", "dev-1")) == ("f1", "dev-1", "status")
    assert topics.parse("edgekit/f1/roots") is None
    for bad in ("a/b", "+", "#", ""):
        with pytest.raises(ValueError):
            topics.online("f1", bad)


def test_status_schema():
    s = Status(device="d", state="active", model="m", version="1", sequence=3, labels={"site": "x"})
    back = Status.from_json(s.to_json())
    assert back == s
    assert set(json.loads(s.to_json())) == {
        "device",
        "state",
        "model",
        "version",
        "sequence",
        "rollout",
        "reason",
        "labels",
        "ts",
    }
    for bad in (
        b"[]",
        b"{",
        json.dumps({"device": "d", "state": "weird"}).encode(),
        json.dumps({"device": "d", "state": "idle", "sequence": "1"}).encode(),
        json.dumps({"device": "d", "state": "idle", "labels": {"a": 1}}).encode(),
    ):
        with pytest.raises(ProtocolError):
            Status.from_json(bad)


def test_online_and_will():
    o = Online.from_json(last_will("dev-9"))
    assert (o.device, o.online) == ("dev-9", False)
    assert Online.from_json(Online("d", True, {"a": "b"}).to_json()).labels == {"a": "b"}
