"""Shadow canary (issue 13): a rollout's shadow mode and promotion rule, and per membership the
shadow stats the device last reported while shadowing (the evidence it was promoted, or the
rollout aborted, by).

Revision ID: 0005
"""

from __future__ import annotations

from fleet.migrations.ddl import run

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_STATS = ("shadow_requests", "top1_agreement", "cosine_mean", "max_abs", "latency_ratio", "shadow_updated")


def upgrade() -> None:
    run(
        "ALTER TABLE rollouts ADD COLUMN shadow INTEGER NOT NULL DEFAULT 0",  # 0 | 1
        "ALTER TABLE rollouts ADD COLUMN promote TEXT NOT NULL DEFAULT '[]'",  # ["top1_agreement>=0.98"]
        "ALTER TABLE rollouts ADD COLUMN min_shadow_requests {BIGINT} NOT NULL DEFAULT 0",
        "ALTER TABLE rollout_devices ADD COLUMN shadow_requests {BIGINT}",
        "ALTER TABLE rollout_devices ADD COLUMN top1_agreement {REAL}",
        "ALTER TABLE rollout_devices ADD COLUMN cosine_mean {REAL}",
        "ALTER TABLE rollout_devices ADD COLUMN max_abs {REAL}",
        "ALTER TABLE rollout_devices ADD COLUMN latency_ratio {REAL}",
        "ALTER TABLE rollout_devices ADD COLUMN shadow_updated {REAL}",
    )


def downgrade() -> None:
    run(
        *(f"ALTER TABLE rollout_devices DROP COLUMN {c}" for c in reversed(_STATS)),
        "ALTER TABLE rollouts DROP COLUMN min_shadow_requests",
        "ALTER TABLE rollouts DROP COLUMN promote",
        "ALTER TABLE rollouts DROP COLUMN shadow",
    )
