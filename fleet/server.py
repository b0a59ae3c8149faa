"""FleetServer: wires registry, devices, rollouts, MQTT, HTTP together and runs the event loop.

Threads: paho's network thread only enqueues messages (and a "resync" event on every reconnect);
one engine thread drains the queue in batches (one SQLite transaction per batch: thousands of
status messages per second stay cheap), acknowledges a batch's messages to the broker only after
its commit (manual PUBACK: a report taken in but not committed is redelivered, never lost), runs
the rollout engine's tick and re-publishes the desired-state shadow; uvicorn threads serve artifacts and the admin API. Replicas on one
PostgreSQL ([server] db) all serve HTTP; the holder of the leader lease (fleet.lease) alone holds
the MQTT session, ticks and publishes the outbox.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from edgekit import topics
from edgekit.protocol import ProtocolError, Status
from fleet import admin_tokens, ingest
from fleet import config as fleet_config
from fleet.artifact_store import ArtifactStore, open_artifacts
from fleet.db import BaseDatabase, open_database
from fleet.desired import DesiredStore
from fleet.devices import DeviceRegistry
from fleet.keys import KeyStore
from fleet.lease import Lease, LeaseKeeper
from fleet.mqtt import MqttLink, Receipt
from fleet.outbox import Outbox
from fleet.publisher import Publisher
from fleet.registry import Registry
from fleet.rollouts import RolloutEngine

log = logging.getLogger(__name__)

# Messages per ingest transaction. It holds the database lock, which the lease renewal also takes:
# on PostgreSQL (a round trip per statement) 5,000 held it longer than a lease period at 20,000
# devices (measured: the leader lost its lease mid-connect). 1,000 keeps SQLite's batching gain.
INGEST_BATCH = 1000
RESYNC = "resync"  # engine-loop event: the MQTT link reconnected; re-publish the desired shadow
# (device, kind, payload, receipt): a device message, or an internal event (kick, resync) without receipt
Event = tuple[str, str, bytes, Receipt | None]


def open_state(
    state_dir: Path, artifacts: dict[str, Any] | None = None, db: str = ""
) -> tuple[BaseDatabase, ArtifactStore, Registry]:
    """What offline commands (publish) need: the database and the artifact store fleet.toml's
    [artifacts] names (default: <state_dir>/artifacts), [server] db (default: SQLite there)."""
    database = open_database(db, Path(state_dir))
    store = open_artifacts(artifacts or {}, Path(state_dir))
    return database, store, Registry(database, store)


def write_token(path: Path, token: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


class FleetServer:
    def __init__(self, cfg: dict[str, Any] | None = None):
        self.cfg = cfg or fleet_config.load(None)
        self.fleet = self.cfg["server"]["fleet"]
        self.state_dir = fleet_config.state_dir(self.cfg)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.db, self.store, self.registry = open_state(
            self.state_dir, self.cfg.get("artifacts"), self.cfg["server"].get("db", "")
        )
        self.devices = DeviceRegistry(self.db)
        self.desired = DesiredStore(self.db)
        self.keys = KeyStore(self.state_dir)
        self.broker: Any = None
        self.link: MqttLink | None = None
        self.outbox: Outbox | None = None
        self.engine: RolloutEngine
        self.leader: LeaseKeeper | None = None
        self.admin_token = ""
        self._events: queue.Queue[Event | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._http: list[Any] = []
        self.messages_in = 0
        self.outcomes = ingest.Outcomes()  # per message: accepted, or refused by reason
        self.resyncs = 0

    def broker_address(self) -> str:
        return f"{self.cfg['broker']['host']}:{self.cfg['broker']['port']}"

    def start(self) -> None:
        from fleet.http import UvicornThread, admin_app, artifact_app

        if not self.keys.exists():
            log.warning(
                "no keys in %s: creating a root and a release key (move keys/root.pem offline)",
                self.state_dir,
            )
            self.keys.init(self.fleet)
        b = self.cfg["broker"]
        if b["embedded"]:
            from fleet.broker import start_embedded

            # enrolled devices + the server's own credentials, which `b` now carries for the link
            self.broker, b = start_embedded(self.cfg, self.state_dir)
        self._link_cfg = b
        self.link = self._new_link()
        # Replicas of one database: the lease holder alone ticks, publishes and takes device
        # reports (its broker session); every replica serves HTTP and writes outbox rows.
        srv, a = self.cfg["server"], self.cfg["admin"]
        self.replica_id = srv.get("replica_id") or f"{socket.gethostname()}:{a['port']}:{self.state_dir}"
        self.lease = Lease(self.db, self.replica_id, float(srv.get("lease_seconds", 10.0)))
        # One publisher loop for every message the server sends (fleet.outbox).
        self.outbox = Outbox(
            self.db,
            self.link,
            float(self.cfg["server"].get("outbox_retry_seconds", 10.0)),
            active=self.lease.held,
        )
        publisher = Publisher(
            self.outbox,
            self.desired,
            self.fleet,
            self.keys.release_key(),
            self.cfg["http"]["public_url"],
            self.cfg["server"]["channel"],
            timedelta(days=float(self.cfg["server"]["manifest_ttl_days"])),
        )
        self.publisher = publisher
        self.engine = RolloutEngine(
            self.db,
            self.registry,
            self.devices,
            publisher,
            deltas=bool(self.cfg["server"].get("deltas", True)),
        )
        # A leader that cannot reach the broker cannot publish: it gives the lease up.
        self.leader = LeaseKeeper(
            self.lease,
            self._lead,
            self._step_down,
            down_for=lambda: self.link.down_for() if self.link else float("inf"),
        )
        if not self.leader.step(raise_errors=True):
            held = self.lease.holder_now()
            log.info("replica %s standing by: %s leads", self.replica_id, held[0] if held else "nobody yet")
        self.leader.start()
        # Hashed in the database: any replica accepts it. The file is for the local CLI.
        token = admin_tokens.issue(self.db, f"serve:{self.replica_id}")
        self.admin_token = write_token(self.state_dir / "admin.token", token)
        h, a = self.cfg["http"], self.cfg["admin"]
        self._http = [
            UvicornThread(artifact_app(self), h["host"], int(h["port"]), "artifact-http"),
            UvicornThread(admin_app(self), a["host"], int(a["port"]), "admin-http"),
        ]
        for s in self._http:
            s.start()
        self._thread = threading.Thread(target=self._loop, name="fleet-engine", daemon=True)
        self._thread.start()
        log.info(
            "fleet %r serving: mqtt %s, artifacts %s, admin http://%s:%s",
            self.fleet,
            self.broker_address(),
            self.cfg["http"]["public_url"],
            a["host"],
            a["port"],
        )

    def _new_link(self) -> MqttLink:
        return MqttLink(
            self._link_cfg,
            None,
            [topics.all_devices(self.fleet, "status"), topics.all_devices(self.fleet, "online")],
            on_reconnect=lambda: self._events.put(("", RESYNC, b"", None)),
            on_delivery=self._on_message,
        )

    def _lead(self) -> None:
        """This replica took the lease: connect the broker session, publish, re-publish."""
        if self.link is None:
            self.link = self._new_link()
            assert self.outbox is not None
            self.outbox.transport = self.link
        try:
            self.link.connect()
        except BaseException:
            self.link.close()
            self.link = None
            raise
        assert self.outbox is not None
        self.outbox.start()
        # A new leader (or a restarted server) may face a fresh broker, or one that lost its state.
        self.resync()

    def _step_down(self) -> None:
        """Another replica may lead now: stop publishing and leave the broker session to it."""
        if self.outbox:
            self.outbox.stop()
        if self.link:
            self.link.close()
            self.link = None

    def leads(self) -> bool:
        return self.leader.leading and self.lease.held()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.leader:
            self.leader.stop()  # no more transitions; the lease is released last
        # Publish what is committed (bounded: the broker may be away; what is left goes out at the
        # next start). Then stop the inflow, and let the engine apply every report already taken
        # in (the broker keeps what it has not delivered for the persistent session): none is lost.
        if self.outbox:
            self.outbox.flush(float(self.cfg["server"].get("stop_flush_seconds", 5.0)))
        if self.link:
            self.link.close()
        self._events.put(None)
        if self._thread:
            self._thread.join(timeout=30)
        if self.outbox:  # what is still unpublished stays in the outbox for the next start
            self.outbox.stop()
        for s in self._http:
            s.stop()
        if self.leader and self.leader.leading:
            self.lease.release()  # at once: another replica need not wait for the expiry
        if self.broker:
            self.broker.stop()
        self.db.close()

    def __enter__(self) -> FleetServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reload_keys(self) -> int:
        """After `keys rotate`: sign with the new release key and republish the root chain."""
        with self.db.lock:
            self.publisher.key = self.keys.release_key()
            self.publisher.publish_roots(self.keys.root_chain())
        return self.keys.current_root().version

    def resync(self) -> int:
        """Queue the root chain and every stored desired payload again, retained and
        byte-identical: the server is the source of truth, the broker's retained messages a cache
        that a restart without persistence or a failover can lose. Agents ignore (or resume) a
        byte-identical manifest, so re-sending is always safe."""
        with self.db.tx():
            self.publisher.publish_roots(self.keys.root_chain())
            n = self.publisher.republish()
        self.resyncs += 1
        log.info("re-published the root chain and %d desired states", n)
        return n

    def kick(self) -> None:
        """Wake the engine loop now (after an operator action) instead of at the next tick."""
        self._events.put(("", "kick", b"", None))

    # paho's thread: only enqueue.
    def _on_message(self, topic: str, payload: bytes, receipt: Receipt | None = None) -> None:
        parsed = topics.parse(topic)
        if parsed and parsed[0] == self.fleet:
            self._events.put((parsed[1], parsed[2], payload, receipt))
        else:
            self.outcomes.refused(
                ingest.UNKNOWN_TOPIC, f"on {repr(topic)[:120]}", "not a device topic of this fleet"
            )
            self._ack([receipt])

    def _ack(self, receipts: list[Receipt | None]) -> None:
        link = self.link
        if link is not None:
            for r in receipts:
                if r is not None:
                    link.ack(r)

    def _redeliverable(self, e: Event) -> bool:
        """Whether the broker will deliver `e` again (its connection is gone, the persistent
        session keeps it unacknowledged): then applying it here would only apply it twice."""
        receipt, link = e[3], self.link
        if receipt is None or not self._link_cfg.get("persistent_session", True):
            return False
        return link is None or not link.current(receipt)

    def _drain(self, timeout: float) -> list[Event | None]:
        batch: list[Event | None] = []
        try:
            batch.append(self._events.get(timeout=timeout))
            while len(batch) < INGEST_BATCH:
                batch.append(self._events.get_nowait())
        except queue.Empty:
            pass
        return batch

    def _loop(self) -> None:
        tick = float(self.cfg["server"]["tick_seconds"])
        next_tick = time.monotonic()
        failed: list[Event] = []  # a batch whose commit failed (the database is away): again, first
        while True:
            wait = 0.5 if failed else max(0.0, next_tick - time.monotonic())
            batch = self._drain(wait)
            stopping = any(e is None for e in batch)  # stop() enqueues None after the last message
            events = failed + [e for e in batch if e is not None]
            failed = []
            if not stopping and any(e[1] == RESYNC for e in events):
                try:
                    self.resync()
                except Exception:  # the next reconnect retries; the stored state is intact
                    log.exception("re-publishing desired state failed")
            try:
                # Stopping, the link is closed: apply what was taken in (its redelivery, if any,
                # applies it again, harmlessly) rather than lose it with an embedded broker.
                self._apply(events, skip_redeliverable=not stopping)
            except Exception as err:  # not acknowledged: kept, and retried until it commits
                log.warning("could not commit %d messages (%s); retrying", len(events), err)
                failed = [e for e in events if e[3] is not None]
            if stopping:
                return  # what is not committed is not acknowledged: the broker keeps it
            try:
                # Tick on every batch too: a wave advances as soon as its last report arrives.
                if self.leads():
                    self.engine.tick()
            except Exception:  # keep serving; the next tick retries
                log.exception("engine loop error")
            next_tick = time.monotonic() + tick  # after a failed tick too: no busy retry

    def _apply(self, batch: list[Event], skip_redeliverable: bool = True) -> None:
        """One transaction per batch, one savepoint per message: a refused or failing message
        loses only itself. Counted, and acknowledged to the broker, once committed."""
        if skip_redeliverable:
            batch = [e for e in batch if not self._redeliverable(e)]
        if not batch:
            return
        now = time.time()
        states: list[str] = []  # of the status reports (for the fault-test crash point)
        accepted, empty = 0, 0
        refused: list[tuple[str, str, str, int]] = []
        with self.db.tx() as c:
            for device, kind, payload, _receipt in batch:
                if kind in ("kick", RESYNC):
                    continue
                if not payload:
                    empty += 1
                    continue
                try:
                    msg = ingest.decode(device, kind, payload)
                    if isinstance(msg, Status):
                        states.append(msg.state)
                    with self.db.savepoint():
                        ingest.apply(c, self.engine, msg, now)
                except ProtocolError as e:
                    refused.append((e.reason, ingest.where(device, kind), e.detail, logging.WARNING))
                except Exception as e:  # a bug, not bad input; the traceback only at DEBUG
                    detail = f"{type(e).__name__}: {e}"
                    refused.append((ingest.INTERNAL, ingest.where(device, kind), detail, logging.ERROR))
                    log.debug("internal error ingesting a message", exc_info=True)
                else:
                    accepted += 1
            ingest.crash_before_commit(states)
        self._ack([e[3] for e in batch])
        self.messages_in += accepted + len(refused)
        self.outcomes.accepted(accepted)
        self.outcomes.empty(empty)
        for reason, where, detail, level in refused:
            self.outcomes.refused(reason, where, detail, level)
