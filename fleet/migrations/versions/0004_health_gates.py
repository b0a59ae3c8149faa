"""Health gates (issue 13): a rollout's gates, bake time and breach action, and the latest health
report per device and model version (a device's report of the version it ran before an update
stays, as that device's latency baseline).

Revision ID: 0004
"""

from __future__ import annotations

from fleet.migrations.ddl import run

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run(
        "ALTER TABLE rollouts ADD COLUMN gates TEXT NOT NULL DEFAULT '[]'",  # ["error_rate<=0.01", ...]
        "ALTER TABLE rollouts ADD COLUMN bake {REAL} NOT NULL DEFAULT 0",
        "ALTER TABLE rollouts ADD COLUMN on_breach TEXT NOT NULL DEFAULT 'abort'",
        "ALTER TABLE rollouts ADD COLUMN bake_started {REAL}",
        """CREATE TABLE device_health (
    device TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, window_s {REAL} NOT NULL,
    requests {BIGINT} NOT NULL, errors {BIGINT} NOT NULL, fallbacks {BIGINT} NOT NULL, p95_ms {REAL},
    updated {REAL} NOT NULL, PRIMARY KEY (device, model, version))""",
        # the fleet-wide baseline: p95 of the devices running a version
        "CREATE INDEX device_health_version ON device_health (model, version)",
    )


def downgrade() -> None:
    run(
        "DROP TABLE device_health",
        "ALTER TABLE rollouts DROP COLUMN bake_started",
        "ALTER TABLE rollouts DROP COLUMN on_breach",
        "ALTER TABLE rollouts DROP COLUMN bake",
        "ALTER TABLE rollouts DROP COLUMN gates",
    )
