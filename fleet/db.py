"""The fleet server's database: SQLite (the default, one file, WAL) or PostgreSQL, by URL.

`open_database(url, state_dir)`: empty, a path or `sqlite:///path` -> SQLite (this module);
`postgresql://...` -> PostgreSQL (fleet.db_postgres). Both give the same contract: `tx()` (one
transaction, re-entrant), `savepoint()`, `query()`, and `lock` + `conn` for reads outside a
transaction; SQL is written once with `?` placeholders and `conn.dialect` (fleet.dialect) for
the few spellings the two do not share. The schema is fleet.migrations' (alembic), applied on open.

One connection per process behind a lock: writes are tiny and serialized anyway; batching status
updates into one transaction is what makes 5,000 devices cheap (see fleet.devices). Side effects
of a transaction (MQTT messages) are rows of the same transaction in the `outbox` table,
published after commit by fleet.outbox.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fleet import migrations
from fleet.dialect import SQLITE, Conn
from fleet.errors import FleetError

log = logging.getLogger(__name__)

DEFAULT_FILE = "fleet.db"


class SqliteConn(sqlite3.Connection):
    dialect = SQLITE


class BaseDatabase:
    """tx/savepoint/query over `self.conn`, whatever the backend."""

    url: str
    lock: threading.RLock
    begin = "BEGIN"

    @property
    def conn(self) -> Conn:
        raise NotImplementedError

    @property
    def dialect(self) -> Any:
        return self.conn.dialect

    @contextmanager
    def tx(self) -> Iterator[Conn]:
        """One transaction, under the lock (re-entrant: nested calls join the outer one)."""
        with self.lock:
            c = self.conn
            if c.in_transaction:
                yield c
                return
            c.execute(self.begin)
            try:
                yield c
            except BaseException:
                try:
                    c.execute("ROLLBACK")
                except Exception:  # a dead connection rolled back already; the first error matters
                    log.debug("rollback failed", exc_info=True)
                raise
            c.execute("COMMIT")

    @contextmanager
    def savepoint(self) -> Iterator[Conn]:
        """A unit inside the open transaction that rolls back alone: one bad message in a batch
        loses only itself, never the other devices' reports (the batch still commits once)."""
        with self.lock:
            c = self.conn
            if not c.in_transaction:
                raise RuntimeError("savepoint() needs an open tx()")
            c.execute("SAVEPOINT unit")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK TO unit")  # its outbox rows go with it
                c.execute("RELEASE unit")
                raise
            c.execute("RELEASE unit")

    def query(self, sql: str, args: tuple = ()) -> list[Any]:
        with self.lock:
            return list(self.conn.execute(sql, args).fetchall())

    def close(self) -> None:
        raise NotImplementedError


def _versioned(c: Conn) -> str | None:
    """The alembic revision, read on the fleet's own connection (no alembic import when current)."""
    try:
        rows = c.execute("SELECT version_num FROM alembic_version").fetchall()
    except Exception:  # no such table yet
        return None
    return rows[0][0] if rows else None


class Database(BaseDatabase):
    """SQLite: one file, WAL mode."""

    begin = "BEGIN IMMEDIATE"

    def __init__(self, path: Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.url = f"sqlite:///{path.resolve()}"
        self.lock = threading.RLock()
        self._conn = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=30, factory=SqliteConn
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        if _versioned(self._conn) != migrations.HEAD:
            migrations.upgrade(self.url)

    @property
    def conn(self) -> SqliteConn:
        return self._conn

    def close(self) -> None:
        with self.lock:
            self._conn.close()


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def sqlite_path(url: str, state_dir: Path) -> Path:
    """The file a non-PostgreSQL db setting names: empty -> <state_dir>/fleet.db."""
    if not url:
        return Path(state_dir) / DEFAULT_FILE
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :])
    if "://" in url:
        raise FleetError(
            f"server.db {url.split('://')[0]}://...: not a database this server supports",
            hint="use a file path, sqlite:///path or postgresql://user:password@host/dbname",
        )
    return Path(url).expanduser()


def open_database(url: str, state_dir: Path) -> BaseDatabase:
    """The database `url` names ([server] db); SQLite under `state_dir` when it is empty."""
    if is_postgres(url):
        from fleet.db_postgres import PgDatabase

        return PgDatabase(url)
    return Database(sqlite_path(url, state_dir))
