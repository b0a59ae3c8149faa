"""Signs a manifest per device and queues it, retained, QoS 1, for the device's `desired` topic.

Every desired payload (manifest or clear) is recorded in the desired-state shadow
(fleet.desired) and queued in the outbox (fleet.outbox) in the same transaction, so the broker
never holds a desired state the server could forget, and no committed one is lost; `republish`
queues the stored bytes again after the broker may have lost its retained messages.

Signing is the costly part of a rollout, so a wave's manifests are signed from one template
(`ManifestBatch`): the release's part of the manifest is built, validated and serialized once,
and each device's canonical bytes are spliced from it; the first of every batch is checked
byte for byte against the reference path (build_manifest, sign, dumps).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from edgekit import topics
from edgekit.protocol import MAX_SEQUENCE
from edgekit.trust import SigningKey, build_manifest, canonical_json, dumps, sign, utcnow
from fleet import repository as repo
from fleet.db import Database
from fleet.desired import DesiredStore
from fleet.outbox import Outbox

log = logging.getLogger(__name__)

_PROBE = "probe"  # a valid device id the template is validated with


class ManifestBatch:
    """Signed manifests of one release for many devices, all issued at the same instant."""

    def __init__(self, pub: Publisher, release: dict[str, Any], rollout: str | None, mode: str = "active"):
        self.pub, self.release, self.rollout, self.mode = pub, release, rollout, mode
        self.now = utcnow()
        probe = self._reference_signed(_PROBE, 1)  # validated with the agents' own rules
        self._keys = sorted(probe)
        self._fixed = {k: canonical_json(v) for k, v in probe.items() if k not in ("device", "sequence")}
        self._checked = False

    def _reference_signed(self, device: str, sequence: int) -> dict[str, Any]:
        p, r = self.pub, self.release
        return build_manifest(
            fleet=p.fleet,
            device=device,
            model=r["model"],
            version=r["version"],
            sequence=sequence,
            artifacts={a.key: a.manifest_entry(p.base_url) for a in r["artifacts"]},
            model_card=r["model_card"],
            smoke_test=r["smoke_test"],
            provenance=r.get("provenance"),
            channel=p.channel,
            rollout=self.rollout,
            mode=self.mode,
            expires_in=p.ttl,
            now=self.now,
        )

    def sign(self, device: str, sequence: int) -> bytes:
        # The engine refuses such devices before signing; a caller that did not is a bug.
        if not topics.valid_name(device) or not 0 < sequence <= MAX_SEQUENCE:
            raise ValueError(f"cannot sign a manifest for {device!r} with sequence {sequence}")
        own = {"device": canonical_json(device), "sequence": str(sequence).encode()}
        parts = [canonical_json(k) + b":" + (own.get(k) or self._fixed[k]) for k in self._keys]
        signed = b"{" + b",".join(parts) + b"}"
        key = self.pub.key
        sigs = canonical_json([{"keyid": key.keyid, "sig": key.sign(signed)}])
        wire = b'{"signatures":' + sigs + b',"signed":' + signed + b"}"
        if not self._checked:
            reference = dumps(sign(self._reference_signed(device, sequence), [key]))
            if reference != wire:
                raise RuntimeError("spliced manifest differs from the reference serialization")
            self._checked = True
        return wire


class Publisher:
    def __init__(
        self,
        outbox: Outbox,
        desired: DesiredStore,
        fleet: str,
        release_key: SigningKey,
        base_url: str,
        channel: str = "stable",
        ttl: timedelta = timedelta(days=30),
    ):
        self.outbox, self.desired, self.fleet, self.key = outbox, desired, fleet, release_key
        self.base_url, self.channel, self.ttl = base_url, channel, ttl
        self.sent = 0
        self.republished = 0

    @property
    def db(self) -> Database:
        return self.desired.db

    def batch(self, release: dict[str, Any], rollout: str | None, mode: str = "active") -> ManifestBatch:
        """Manifests of `release`; mode "shadow" installs it beside the active version (issue 13)."""
        return ManifestBatch(self, release, rollout, mode)

    def manifest(self, device: str, release: dict[str, Any], sequence: int, rollout: str | None) -> bytes:
        return self.batch(release, rollout).sign(device, sequence)

    def store(self, c: repo.Conn, items: Iterable[tuple[str, bytes, int | None]]) -> int:
        """Record and queue (device, payload, sequence) desired states inside the caller's
        transaction; an empty payload is a clear (it deletes the retained message)."""
        items = list(items)
        for device, _p, _s in items:
            topics.check_name("device id", device)  # a row that could never be published is never stored
        repo.put_desired(c, items, time.time())
        self.outbox.add(c, [(topics.desired(self.fleet, d), p, True) for d, p, _s in items])
        self.sent += sum(1 for _d, p, _s in items if p)
        return len(items)

    def clear(self, device: str) -> None:
        """An empty retained message deletes the retained desired state."""
        with self.db.tx() as c:
            self.store(c, [(device, b"", None)])

    def republish(self) -> int:
        """Queue every stored desired payload again, retained, QoS 1, byte-identical. Through
        the outbox, in one transaction: the one publisher loop sends them in order with newer
        states, so the last message on each topic is always the current one."""
        with self.db.tx() as c:
            rows = self.desired.all(c)
            self.outbox.add(c, [(topics.desired(self.fleet, d), p, True) for d, p in rows])
        self.republished += len(rows)
        return len(rows)

    def publish_roots(self, chain: list[dict[str, Any]]) -> None:
        payload = json.dumps(chain, sort_keys=True, separators=(",", ":")).encode()
        with self.db.tx() as c:
            self.outbox.add(c, [(topics.roots(self.fleet), payload, True)])
