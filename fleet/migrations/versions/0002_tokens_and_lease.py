"""Admin tokens (sha256 only) and the leader lease, shared by every replica of one database.

Revision ID: 0002
"""

from __future__ import annotations

from fleet.migrations.ddl import run

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run(
        # one row per token: the sha256 of the random token, never the token itself
        """CREATE TABLE admin_tokens (
    hash TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created {REAL} NOT NULL)""",
        # one row per lease (`leader`): who holds it and until when, on the database's clock
        """CREATE TABLE leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires {REAL} NOT NULL)""",
    )


def downgrade() -> None:
    run("DROP TABLE leases", "DROP TABLE admin_tokens")
