"""Versioned schema migrations (alembic) for both backends, applied when the database is opened.

Migrations are raw SQL through `op.execute`, one text per statement, written once with the
column types of `fleet.dialect` filled in per backend, so SQLite and PostgreSQL share one
history. The baseline (0001) uses `CREATE ... IF NOT EXISTS`: a state directory created before
migrations existed (the same tables, no `alembic_version`) passes through it unchanged and is
stamped, then upgraded like any other.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
# The newest revision under versions/ (tests check it is alembic's head): a database already
# there opens without importing alembic.
HEAD = "0006"


def sqlalchemy_url(url: str) -> str:
    """The fleet's db URL as SQLAlchemy spells it (psycopg 3 is the PostgreSQL driver)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def config(url: str):  # -> alembic.config.Config (imported lazily: only opening a database needs it)
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["url"] = sqlalchemy_url(url)  # not in the ini options: no %-interpolation of passwords
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision`. Safe to run from several replicas at once
    (PostgreSQL: one at a time under an advisory lock, in one transaction)."""
    from alembic import command

    command.upgrade(config(url), revision)


def current(url: str) -> str | None:
    """The revision the database is at (None: not versioned yet)."""
    import sqlalchemy
    from alembic.runtime.migration import MigrationContext

    engine = sqlalchemy.create_engine(sqlalchemy_url(url), poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head() -> str:
    from alembic.script import ScriptDirectory

    rev = ScriptDirectory.from_config(config("sqlite://")).get_current_head()
    assert rev is not None
    return rev
