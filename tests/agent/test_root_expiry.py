"""A real agent enrolled with a root.json that expired long ago (built two years in the past,
valid for one): it starts, refuses what that stale root authorizes with `expired_root`, follows
a rotation published on the retained `roots` topic, and installs what the new root authorizes."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from agent.daemon import Agent
from edgekit import topics
from edgekit.trust import SigningKey, build_root, sign_root, utcnow
from tests.agent.brokers import Fleet, Mosquitto
from tests.agent.conftest import free_port
from tests.agent.support import Keys, manifest
from tests.agent.test_mqtt import agent_config

pytestmark = pytest.mark.timeout(90)


def wait_for(pred, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


def test_agent_starts_with_expired_enrolment_root_and_recovers_by_rotation(tmp_path, files, http):
    """Regression: every agent restart failed 365 days after `keys init`."""
    root_key, rel1, rel2 = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    long_ago = utcnow() - timedelta(days=730)
    v1 = sign_root(build_root([root_key], [rel1.public_hex], version=1, now=long_ago), [root_key])
    keys = Keys(root_key, rel1, v1)

    port = free_port()
    broker = Mosquitto(tmp_path / "mosq", port).start()
    fleet = Fleet(port)
    agent = Agent(agent_config(tmp_path, keys, port, "3.1.1"))
    try:
        agent.start()  # used to raise VerificationError(expired) here
        fleet.wait(lambda ms: any(m.get("online") is True for m in ms), which="online")

        stale = manifest(
            keys, file=files / "cls_v1.onnx", url=http.url + "cls_v1.onnx", sequence=1, version="1.0"
        )
        fleet.publish_desired(stale)
        fleet.wait(lambda ms: any(m.get("reason") == "expired_root" for m in ms))
        assert agent.registry.get("cls") is None

        # The fleet rotates from its expired root (same root key, new release key).
        v2 = sign_root(build_root([root_key], [rel2.public_hex], version=2), [root_key])
        fleet.client.publish(topics.roots("f"), json.dumps([v1, v2]), qos=1, retain=True).wait_for_publish(5)
        wait_for(lambda: agent.updater is not None and agent.updater.verifier.root.version == 2)

        fresh = manifest(
            keys,
            file=files / "cls_v1.onnx",
            url=http.url + "cls_v1.onnx",
            sequence=2,
            version="1.0",
            signer=rel2,
        )
        fleet.publish_desired(fresh)
        fleet.wait(lambda ms: any(m.get("state") == "active" and m.get("version") == "1.0" for m in ms))
        assert agent.registry.get("cls").version == "1.0"
    finally:
        agent.stop()
        fleet.stop()
        broker.stop()
