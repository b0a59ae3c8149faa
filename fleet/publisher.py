"""Signs a manifest per device and publishes it retained, QoS 1, on the device's `desired` topic.

Every desired payload (manifest or clear) is first recorded in the desired-state shadow
(fleet.desired) and published only once that row is committed, so the broker never holds a
desired state the server could forget; `republish` sends the stored bytes again after the broker
may have lost its retained messages.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any, Protocol

from edgekit import topics
from edgekit.trust import SigningKey, build_manifest, dumps, sign
from fleet.desired import DesiredStore

log = logging.getLogger(__name__)


class Transport(Protocol):
    def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> Any: ...


class Publisher:
    def __init__(
        self,
        transport: Transport,
        desired: DesiredStore,
        fleet: str,
        release_key: SigningKey,
        base_url: str,
        channel: str = "stable",
        ttl: timedelta = timedelta(days=30),
    ):
        self.transport, self.desired, self.fleet, self.key = transport, desired, fleet, release_key
        self.base_url, self.channel, self.ttl = base_url, channel, ttl
        self.sent = 0
        self.republished = 0

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
        self._set_desired(device, self.manifest(device, release, sequence, rollout), sequence)
        self.sent += 1

    def clear(self, device: str) -> None:
        """An empty retained message deletes the retained desired state."""
        self._set_desired(device, b"", None)

    def _set_desired(self, device: str, payload: bytes, sequence: int | None) -> None:
        db = self.desired.db
        with db.tx():  # joins the rollout engine's transaction when there is one
            self.desired.put(device, payload, sequence)
            db.after_commit(lambda: self._publish_desired(device, payload))

    def _publish_desired(self, device: str, payload: bytes) -> None:
        self.transport.publish(topics.desired(self.fleet, device), payload, retain=True, qos=1)

    def republish(self) -> int:
        """Publish every stored desired payload again, retained, QoS 1, byte-identical.

        Under the database lock, so it cannot interleave with a newer payload being committed
        and published: the last message on each topic is always the current one."""
        with self.desired.db.lock:
            rows = self.desired.all()
            for device, payload in rows:
                self._publish_desired(device, payload)
        self.republished += len(rows)
        return len(rows)

    def publish_roots(self, chain: list[dict[str, Any]]) -> None:
        payload = json.dumps(chain, sort_keys=True, separators=(",", ":")).encode()
        self.transport.publish(topics.roots(self.fleet), payload, retain=True, qos=1)
