"""alembic's entry point: run the fleet's migrations on the URL fleet.migrations.config() set."""

from __future__ import annotations

import sqlalchemy
from alembic import context

# Any fixed number: replicas starting together migrate one at a time.
MIGRATION_LOCK = 0x65646765  # "edge"

url = context.config.attributes["url"]
engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=False)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Taken before alembic reads the current revision; released at commit.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        context.run_migrations()
engine.dispose()
