"""The desired-state shadow: the exact bytes last published on each device's `desired` topic.

The server, not the broker, is the source of truth for desired state (like an AWS IoT device
shadow). A broker that loses its retained messages (restart without persistence, failover to
another node, wiped state) would otherwise leave an offline device without its manifest for
good: re-signing is no way out (same sequence = replay, new sequence = a different update), so
the server keeps the signed bytes and publishes them again, byte-identical, whenever it
(re)connects. An empty payload is a clear ("no desired state") and is kept and re-sent as such.
"""

from __future__ import annotations

import logging
import time

from edgekit import topics
from fleet import repository as repo
from fleet.db import BaseDatabase
from fleet.repository import Conn

log = logging.getLogger(__name__)


class DesiredStore:
    def __init__(self, db: BaseDatabase):
        self.db = db

    def put(self, device: str, payload: bytes, sequence: int | None = None) -> None:
        """Record what `desired` now holds for `device` (joins the caller's transaction).
        fleet.publisher stores and queues in one step; this records without publishing."""
        topics.check_name("device id", device)  # a row that could never be published is never stored
        with self.db.tx() as c:
            repo.put_desired(c, [(device, payload, sequence)], time.time())

    def get(self, device: str) -> bytes | None:
        with self.db.lock:
            return repo.get_desired(self.db.conn, device)

    def all(self, c: Conn | None = None) -> list[tuple[str, bytes]]:
        """Every stored row that can be published. A row whose device id the topic layer
        refuses (stored by a version that did not validate ids) is skipped with a warning:
        stored data never stops a server from starting."""
        with self.db.lock:
            rows = repo.all_desired(c or self.db.conn)
        out = []
        for device, payload in rows:
            if not topics.valid_name(device):
                log.warning("skipping the stored desired state of invalid device id %s", repr(device)[:80])
                continue
            out.append((device, payload))
        return out
