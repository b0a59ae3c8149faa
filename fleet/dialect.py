"""What differs between the fleet's two SQL backends, in one small object per backend.

The fleet's SQL (fleet.repository and its neighbours) is written once, with `?` placeholders,
and reads `c.dialect` for the few spellings SQLite and PostgreSQL do not share. Nothing else
branches on the backend. `Conn` is what every SQL function receives: a sqlite3 connection
(fleet.db) or the psycopg wrapper (fleet.db_postgres), both with `.dialect`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Dialect:
    name: str
    # `x {in_list}` with one parameter made by `list_param`: membership in a list of any length
    in_list: str
    list_param: Callable[[Iterable[Any]], Any]
    greatest: str  # the larger of two values: scalar MAX(a, b) / GREATEST(a, b)
    # labels (a JSON object stored as text) hold string `?` (the key) equal to `?` (the value)
    label_match: str
    is_same: str  # NULL-safe equality: `a {is_same} b`
    epoch_now: str  # the database's clock as Unix seconds (one clock for every replica)
    # appended to a SELECT that locks the rows it reads for the transaction ("" where the whole
    # database has one writer at a time, as SQLite does)
    for_update: str


SQLITE = Dialect(
    name="sqlite",
    in_list="IN (SELECT value FROM json_each(?))",
    list_param=lambda values: json.dumps(list(values)),
    greatest="MAX",
    label_match=(
        "EXISTS (SELECT 1 FROM json_each(d.labels) l WHERE l.key=? AND l.type='text' AND l.value=?)"
    ),
    is_same="IS",
    epoch_now="((julianday('now') - 2440587.5) * 86400.0)",
    for_update="",
)

POSTGRES = Dialect(
    name="postgresql",
    in_list="= ANY(?)",
    list_param=list,  # psycopg sends a Python list as an array
    greatest="GREATEST",
    label_match="(d.labels::jsonb -> ?::text) = to_jsonb(?::text)",
    is_same="IS NOT DISTINCT FROM",
    epoch_now="EXTRACT(EPOCH FROM clock_timestamp())::double precision",
    for_update=" FOR UPDATE",
)


class Row(Protocol):
    def __getitem__(self, key: int | str) -> Any: ...


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """A connection inside (or outside) the caller's transaction; rows index by position and name."""

    dialect: Dialect

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, args: Sequence[Any] = ...) -> Any: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...
