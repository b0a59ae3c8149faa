"""The storage layer on both backends: migrations (and an unversioned SQLite file from before
them), rows by name, the dialect's spellings, sequences under concurrency, the leader lease,
admin tokens, and a PostgreSQL connection that is lost and replaced."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest

from fleet import admin_tokens, migrations
from fleet import repository as repo
from fleet.db import BaseDatabase, Database, open_database
from fleet.lease import Lease
from fleet.offers import check_active
from tests.fleet.helpers import wait_for


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> BaseDatabase:
    url = request.getfixturevalue("pg_server").create_database() if request.param == "postgres" else ""
    d = open_database(url, tmp_path)
    yield d
    d.close()


def test_head_constant_is_alembics_head():
    assert migrations.head() == migrations.HEAD


def test_an_unversioned_sqlite_file_from_before_migrations_upgrades_keeping_its_rows(tmp_path):
    path = tmp_path / "fleet.db"
    url = f"sqlite:///{path}"
    migrations.upgrade(url, "0001")  # the baseline is the schema fleet.db created before
    with sqlite3.connect(path) as c:
        c.execute("DROP TABLE alembic_version")
        c.execute(
            "INSERT INTO devices (id, labels, issued_sequence) VALUES ('dev-1', '{\"site\": \"b\"}', 7)"
        )
    assert migrations.current(url) is None
    d = Database(path)
    try:
        assert migrations.current(url) == migrations.HEAD
        assert [dict(r) for r in d.query("SELECT id, issued_sequence FROM devices")] == [
            {"id": "dev-1", "issued_sequence": 7}
        ]
        assert d.query("SELECT COUNT(*) FROM admin_tokens")[0][0] == 0
    finally:
        d.close()


def test_dialect_spellings_agree(db):
    with db.tx() as c:
        for i, labels in enumerate([{"site": "b"}, {"site": "p"}, {"site": 1}, {}]):
            c.execute("INSERT INTO devices (id, labels) VALUES (?, ?)", (f"d{i}", json.dumps(labels)))
        assert repo.select_devices(c, {"site": "b"}) == ["d0"]
        assert repo.select_devices(c, {"site": "1"}) == []  # a number is not the string "1"
        assert repo.select_devices(c, {}, ["d1", "d3", "nope"]) == ["d1", "d3"]
        assert repo.select_devices(c, {}, []) == []
        assert repo.assign_sequences(c, []) == {}
        assert repo.assign_sequences(c, ["d0", "d1"]) == {"d0": 1, "d1": 1}
        repo.outbox_add(c, [("t/a", b"\x00\xff", True), ("t/b", b"", False)], 1.0)
        rows = repo.outbox_pending(c, 0, 10)
        assert [(t, p, r) for _i, t, p, r in rows] == [("t/a", b"\x00\xff", True), ("t/b", b"", False)]
        repo.outbox_mark_sent(c, [rows[0][0]], 2.0)
        assert repo.outbox_count(c) == 1
        # a version of None matches a NULL version (NULL-safe equality) and nothing else
        assert check_active(c, "d0", "m", None) is None  # the enrolment baseline
    row = db.query("SELECT id, labels FROM devices WHERE id=?", ("d0",))[0]
    assert (row[0], row["labels"], dict(row)["id"]) == ("d0", '{"site": "b"}', "d0")


def test_concurrent_sequence_assignment_never_repeats_a_sequence(db, tmp_path):
    """Several connections (as several replicas have) assign sequences to the same devices at once."""
    devices = [f"d{i}" for i in range(20)]
    with db.tx() as c:
        c.executemany("INSERT INTO devices (id) VALUES (?)", [(d,) for d in devices])
    got: list[dict[str, int]] = []
    lock = threading.Lock()

    def worker() -> None:
        other = open_database(db.url, tmp_path)
        try:
            for _ in range(10):
                with other.tx() as c:
                    seqs = repo.assign_sequences(c, devices)
                with lock:
                    got.append(seqs)
        finally:
            other.close()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 30
    for d in devices:
        assert sorted(g[d] for g in got) == list(range(1, 31)), d


def test_lease_one_holder_expiry_and_release(db):
    a, b = Lease(db, "a", ttl=0.6), Lease(db, "b", ttl=0.6)
    assert a.claim() and a.held()
    assert not b.claim() and not b.held()
    assert a.claim()  # renewal by the holder
    assert a.holder_now() is not None and a.holder_now()[0] == "a"
    wait_for(lambda: not a.held(), 5, "a's own view of its lease ran out")
    wait_for(b.claim, 5, "b took the expired lease")
    assert not a.claim()
    b.release()
    assert a.claim()  # at once after a release


def test_admin_tokens_are_stored_hashed_and_replaced_by_name(db):
    t1 = admin_tokens.issue(db, "ops")
    assert admin_tokens.authorized(db, f"Bearer {t1}")
    assert not admin_tokens.authorized(db, "Bearer wrong") and not admin_tokens.authorized(db, None)
    assert not db.query("SELECT 1 FROM admin_tokens WHERE hash=?", (t1,))  # never in clear
    t2 = admin_tokens.issue(db, "ops")
    assert admin_tokens.authorized(db, f"Bearer {t2}") and not admin_tokens.authorized(db, f"Bearer {t1}")


def test_a_lost_postgres_connection_is_replaced(pg_server):
    d = open_database(pg_server.create_database(), Path("/nonexistent"))
    try:
        pid = d.query("SELECT pg_backend_pid()")[0][0]
        other = open_database(d.url, Path("/nonexistent"))
        other.query("SELECT pg_terminate_backend(?)", (pid,))
        other.close()
        with pytest.raises(psycopg.OperationalError):
            d.query("SELECT 1")  # the statement that meets the loss fails
        assert d.query("SELECT 1")[0][0] == 1  # the next one runs on a new connection
    finally:
        d.close()


def test_cli_db_upgrade_and_tokens_create(tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli import app

    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n')
    runner = CliRunner()
    r = runner.invoke(app, ["fleet", "db", "upgrade", "--config", str(cfg)])
    assert r.exit_code == 0 and f"revision {migrations.HEAD}" in r.output, r.output
    r = runner.invoke(app, ["fleet", "tokens", "create", "ci", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    d = open_database("", tmp_path / "state")
    try:
        assert admin_tokens.authorized(d, f"Bearer {r.output.strip()}")
    finally:
        d.close()
