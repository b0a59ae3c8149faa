"""Provenance per release (issue 13: the conversion report travels in the signed manifest) and
the cache of binary deltas between artifacts (the delta bytes live in the artifact store).

Revision ID: 0003
"""

from __future__ import annotations

from fleet.migrations.ddl import run

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run(
        # edgekit.provenance document of a published version (fleet.registry)
        """CREATE TABLE provenance (
    model TEXT NOT NULL, version TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (model, version))""",
        # base blob -> target blob, made once (fleet.deltas); sha256/size NULL: not worth shipping
        """CREATE TABLE deltas (
    base TEXT NOT NULL, target TEXT NOT NULL, algorithm TEXT NOT NULL, sha256 TEXT, size {BIGINT},
    PRIMARY KEY (base, target, algorithm))""",
    )


def downgrade() -> None:
    run("DROP TABLE deltas", "DROP TABLE provenance")
