"""PostgreSQL behind fleet.db's contract (psycopg 3, the `scale` extra).

One autocommit connection per process behind the lock, with explicit BEGIN/COMMIT from `tx()`:
a read outside a transaction holds no snapshot open. SQL arrives with `?` placeholders and is
handed to psycopg with `%s` (translated once per statement text). Rows index by position and
by column name, like sqlite3.Row. A connection the server lost (PostgreSQL restarted) is
replaced on next use; the transaction that hit the loss fails and its caller retries as for
any other database error.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from fleet import migrations
from fleet.db import BaseDatabase, _versioned
from fleet.dialect import POSTGRES
from fleet.errors import FleetError


class _Row(tuple):
    _index: dict[str, int] = {}

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


@lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[_Row]:
    return type("Row", (_Row,), {"_index": {n: i for i, n in enumerate(names)}})


def _rows(cursor: Any) -> Any:
    desc = cursor.description
    return _row_class(tuple(c.name for c in desc)) if desc else tuple


@lru_cache(maxsize=1024)
def _pg(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (a literal % doubled). The fleet's SQL has no `?`
    inside string literals."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgConn:
    dialect = POSTGRES

    def __init__(self, raw: psycopg.Connection[Any]):
        self.raw = raw

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, args: Any = ()) -> psycopg.Cursor[Any]:
        # Without parameters psycopg leaves % alone, so the text goes as written.
        return self.raw.execute(_pg(sql), args) if args else self.raw.execute(sql)

    def executemany(self, sql: str, rows: Any) -> psycopg.Cursor[Any]:
        cur = self.raw.cursor()
        cur.executemany(_pg(sql), list(rows))
        return cur

    def close(self) -> None:
        self.raw.close()


def connect(url: str) -> PgConn:
    try:
        return PgConn(psycopg.connect(url, autocommit=True, row_factory=_rows, connect_timeout=10))
    except psycopg.OperationalError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FleetError(f"cannot connect to PostgreSQL: {first}", hint="check [server] db") from e


class PgDatabase(BaseDatabase):
    def __init__(self, url: str):
        self.url = url
        self.lock = threading.RLock()
        self._conn = connect(url)
        if _versioned(self._conn) != migrations.HEAD:
            migrations.upgrade(url)

    @property
    def conn(self) -> PgConn:
        with self.lock:
            if self._conn.raw.closed or self._conn.raw.broken:
                self._conn = connect(self.url)
            return self._conn

    def close(self) -> None:
        with self.lock:
            self._conn.close()
