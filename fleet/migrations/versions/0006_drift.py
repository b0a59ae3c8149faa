"""Drift telemetry (issue 13): the latest drift summary per device and model version (the
heartbeat's `drift`, edgekit.protocol.VersionDrift), scored against the release's baseline by
fleet.drift.

Revision ID: 0006
"""

from __future__ import annotations

from fleet.migrations.ddl import run

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run(
        # tensors: the VersionDrift's tensor list as JSON (cumulative since the device loaded it)
        """CREATE TABLE device_drift (
    device TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, tensors TEXT NOT NULL,
    updated {REAL} NOT NULL, PRIMARY KEY (device, model, version))""",
        "CREATE INDEX device_drift_version ON device_drift (model, version)",
    )


def downgrade() -> None:
    run("DROP TABLE device_drift")
