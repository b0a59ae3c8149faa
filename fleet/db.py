"""SQLite state of the fleet server: registry, devices, rollouts, desired state. One file, WAL mode.

One connection shared by the server's threads behind a lock: writes are tiny and SQLite
serializes them anyway; batching status updates into one transaction is what makes 5,000
devices cheap (see fleet.devices). Side effects of a transaction (MQTT messages) are rows of
the same transaction in the `outbox` table, published after commit by fleet.outbox.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL, version TEXT NOT NULL, model_card TEXT NOT NULL, smoke_test TEXT,
    created REAL NOT NULL, PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS artifacts (
    model TEXT NOT NULL, version TEXT NOT NULL, format TEXT NOT NULL, sha256 TEXT NOT NULL,
    size INTEGER NOT NULL, file TEXT NOT NULL, precision TEXT NOT NULL, target TEXT,
    PRIMARY KEY (model, version, format));
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, labels TEXT NOT NULL DEFAULT '{}', online INTEGER NOT NULL DEFAULT 0,
    state TEXT, model TEXT, version TEXT, sequence INTEGER, rollout TEXT, reason TEXT,
    agent_version TEXT, last_seen REAL,
    issued_sequence INTEGER NOT NULL DEFAULT 0,      -- highest manifest sequence ever sent to it
    active_model TEXT, active_version TEXT);         -- last version it reported active
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, selector TEXT NOT NULL,
    waves TEXT NOT NULL, success_threshold REAL NOT NULL, max_failure_rate REAL NOT NULL,
    device_timeout REAL NOT NULL, state TEXT NOT NULL, wave INTEGER NOT NULL DEFAULT -1,
    reason TEXT, created REAL NOT NULL, updated REAL NOT NULL, paused_at REAL, ended REAL);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout TEXT NOT NULL, device TEXT NOT NULL, wave INTEGER NOT NULL, position INTEGER NOT NULL,
    state TEXT NOT NULL, sequence INTEGER, prev_model TEXT, prev_version TEXT,
    rollback_sequence INTEGER, sent_at REAL, updated REAL, reason TEXT,
    PRIMARY KEY (rollout, device));
CREATE INDEX IF NOT EXISTS rollout_devices_device ON rollout_devices (device);
-- progress counts, timeouts and wave dispatch read (rollout, state, wave) alone: index-only
CREATE INDEX IF NOT EXISTS rollout_devices_progress ON rollout_devices (rollout, state, wave);
CREATE TABLE IF NOT EXISTS desired (                  -- the desired-state shadow (fleet.desired)
    device TEXT PRIMARY KEY,
    payload BLOB NOT NULL,                            -- exact bytes last published; empty = cleared
    sequence INTEGER, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (                   -- messages to publish after commit (fleet.outbox)
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
    retain INTEGER NOT NULL, created REAL NOT NULL,
    sent REAL);                                       -- when the broker acknowledged it
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE sent IS NULL;
"""


class Database:
    def __init__(self, path: Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction, under the lock (re-entrant: nested calls join the outer one)."""
        with self.lock:
            if self.conn.in_transaction:
                yield self.conn
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    @contextmanager
    def savepoint(self) -> Iterator[sqlite3.Connection]:
        """A unit inside the open transaction that rolls back alone: one bad message in a batch
        loses only itself, never the other devices' reports (the batch still commits once)."""
        with self.lock:
            if not self.conn.in_transaction:
                raise RuntimeError("savepoint() needs an open tx()")
            self.conn.execute("SAVEPOINT unit")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK TO unit")  # its outbox rows go with it
                self.conn.execute("RELEASE unit")
                raise
            self.conn.execute("RELEASE unit")

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self.conn.execute(sql, args).fetchall()

    def close(self) -> None:
        with self.lock:
            self.conn.close()
