"""The schema as fleet.db created it before migrations (IF NOT EXISTS: existing files pass through).

Revision ID: 0001
"""

from __future__ import annotations

from fleet.migrations.ddl import run

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run(
        """CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL, version TEXT NOT NULL, model_card TEXT NOT NULL, smoke_test TEXT,
    created {REAL} NOT NULL, PRIMARY KEY (model, version))""",
        """CREATE TABLE IF NOT EXISTS artifacts (
    model TEXT NOT NULL, version TEXT NOT NULL, format TEXT NOT NULL, sha256 TEXT NOT NULL,
    size {BIGINT} NOT NULL, file TEXT NOT NULL, precision TEXT NOT NULL, target TEXT,
    PRIMARY KEY (model, version, format))""",
        # issued_sequence: the highest manifest sequence ever sent to the device;
        # active_model/active_version: the last version it reported active
        """CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, labels TEXT NOT NULL DEFAULT '{{}}', online INTEGER NOT NULL DEFAULT 0,
    state TEXT, model TEXT, version TEXT, sequence {BIGINT}, rollout TEXT, reason TEXT,
    agent_version TEXT, last_seen {REAL},
    issued_sequence {BIGINT} NOT NULL DEFAULT 0,
    active_model TEXT, active_version TEXT)""",
        """CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, selector TEXT NOT NULL,
    waves TEXT NOT NULL, success_threshold {REAL} NOT NULL, max_failure_rate {REAL} NOT NULL,
    device_timeout {REAL} NOT NULL, state TEXT NOT NULL, wave INTEGER NOT NULL DEFAULT -1,
    reason TEXT, created {REAL} NOT NULL, updated {REAL} NOT NULL, paused_at {REAL}, ended {REAL})""",
        """CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout TEXT NOT NULL, device TEXT NOT NULL, wave INTEGER NOT NULL, position INTEGER NOT NULL,
    state TEXT NOT NULL, sequence {BIGINT}, prev_model TEXT, prev_version TEXT,
    rollback_sequence {BIGINT}, sent_at {REAL}, updated {REAL}, reason TEXT,
    PRIMARY KEY (rollout, device))""",
        "CREATE INDEX IF NOT EXISTS rollout_devices_device ON rollout_devices (device)",
        # progress counts, timeouts and wave dispatch read (rollout, state, wave) alone
        "CREATE INDEX IF NOT EXISTS rollout_devices_progress ON rollout_devices (rollout, state, wave)",
        # the desired-state shadow (fleet.desired): the exact bytes last published, empty = cleared
        """CREATE TABLE IF NOT EXISTS desired (
    device TEXT PRIMARY KEY, payload {BLOB} NOT NULL, sequence {BIGINT}, updated {REAL} NOT NULL)""",
        # messages to publish after commit (fleet.outbox); sent = when the broker acknowledged it
        """CREATE TABLE IF NOT EXISTS outbox (
    id {SERIAL_PK}, topic TEXT NOT NULL, payload {BLOB} NOT NULL,
    retain INTEGER NOT NULL, created {REAL} NOT NULL, sent {REAL})""",
        "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE sent IS NULL",
    )


def downgrade() -> None:
    raise NotImplementedError("the baseline is not downgraded")
