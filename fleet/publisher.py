"""Signs a manifest per device and publishes it retained, QoS 1, on the device's `desired` topic."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any, Protocol

from edgekit import topics
from edgekit.trust import SigningKey, build_manifest, dumps, sign

log = logging.getLogger(__name__)


class Transport(Protocol):
    def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> Any: ...


class Publisher:
    def __init__(
        self,
        transport: Transport,
        fleet: str,
        release_key: SigningKey,
        base_url: str,
        channel: str = "stable",
        ttl: timedelta = timedelta(days=30),
    ):
        self.transport, self.fleet, self.key = transport, fleet, release_key
        self.base_url, self.channel, self.ttl = base_url, channel, ttl
        self.sent = 0

    def manifest(self, device: str, release: dict[str, Any], sequence: int, rollout: str | None) -> bytes:
        signed = build_manifest(
            fleet=self.fleet,
            device=device,
            model=release["model"],
            version=release["version"],
            sequence=sequence,
            artifacts={a.key: a.manifest_entry(self.base_url) for a in release["artifacts"]},
            model_card=release["model_card"],
            smoke_test=release["smoke_test"],
            channel=self.channel,
            rollout=rollout,
            expires_in=self.ttl,
        )
        return dumps(sign(signed, [self.key]))

    def send(self, device: str, release: dict[str, Any], sequence: int, rollout: str | None) -> None:
        self.transport.publish(
            topics.desired(self.fleet, device),
            self.manifest(device, release, sequence, rollout),
            retain=True,
            qos=1,
        )
        self.sent += 1

    def clear(self, device: str) -> None:
        """An empty retained message deletes the retained desired state."""
        self.transport.publish(topics.desired(self.fleet, device), b"", retain=True, qos=1)

    def publish_roots(self, chain: list[dict[str, Any]]) -> None:
        payload = json.dumps(chain, sort_keys=True, separators=(",", ":")).encode()
        self.transport.publish(topics.roots(self.fleet), payload, retain=True, qos=1)
