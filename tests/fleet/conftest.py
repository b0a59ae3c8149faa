from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet import config as fleet_config
from tests.fleet.helpers import enroller
from tests.support import mosquitto, postgres
from tests.support.net import free_port, free_ports

FLEET = "f1"

# Suites that exercise the database run on both backends (`fleet_db`); the others on SQLite.
DB_MODULES = {
    "test_rollouts",
    "test_outbox",
    "test_hardening",
    "test_ingest_rules",
    "test_restart",
    "test_shadow_rollout",
}
# Tests that write SQLite-only SQL themselves (a database as an older server left it) or open
# fleet.db.Database directly; tests/fleet/test_postgres.py covers what they check on both.
SQLITE_ONLY = {
    "test_rollout_including_a_stored_invalid_id_then_restart_starts",
    "test_rows_left_by_a_stopped_server_are_published_by_the_next_one",
    "test_sequences_are_assigned_atomically_without_overflow",
}
_db_url = {"url": ""}  # the current test's [server] db; server_config() reads it


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__.rsplit(".", 1)[-1] in DB_MODULES and "fleet_db" in metafunc.fixturenames:
        params = [
            pytest.param(
                "postgres",
                marks=pytest.mark.skip("SQLite-only test (see SQLITE_ONLY)")
                if metafunc.function.__name__ in SQLITE_ONLY
                else (),
            ),
        ]
        metafunc.parametrize("fleet_db", ["sqlite", *params], indirect=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[postgres.Postgres]:
    """One PostgreSQL for the session; every test gets its own database in it."""
    if not postgres.available():
        pytest.skip("PostgreSQL not installed (make system-deps)")
    with postgres.Postgres() as pg:
        yield pg


@pytest.fixture(autouse=True)
def fleet_db(request: pytest.FixtureRequest) -> Iterator[str]:
    """The backend of this test's fleet servers: "" (SQLite in the state dir) or a fresh
    PostgreSQL database."""
    kind = getattr(request, "param", "sqlite")
    url = request.getfixturevalue("pg_server").create_database() if kind == "postgres" else ""
    _db_url["url"] = url
    yield url
    _db_url["url"] = ""


def server_config(tmp: Path, broker_port: int, embedded: bool, **broker: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(fleet_config.DEFAULTS)
    http_port, admin_port = free_ports(2)
    cfg["server"].update(
        fleet=FLEET,
        state_dir=str(tmp / "state"),
        tick_seconds=0.1,
        client_id=f"edgekit-fleet-{FLEET}",
        db=_db_url["url"],
    )
    cfg["broker"].update(embedded=embedded, host="127.0.0.1", port=broker_port, client_id=f"fleet-{FLEET}")
    cfg["broker"].update(broker)
    cfg["http"].update(port=http_port, public_url=f"http://127.0.0.1:{http_port}")
    cfg["admin"].update(port=admin_port)
    return cfg


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(params=["embedded", "mosquitto"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "mosquitto" and not mosquitto.available():
        pytest.skip("mosquitto not installed (make system-deps)")
    return request.param


@pytest.fixture
def fleet_env(broker_kind: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A running FleetServer on the chosen broker plus what devices need to connect to it."""
    from fleet.server import FleetServer

    device_pw = "device-secret"
    if broker_kind == "embedded":
        port = free_port()
        cfg = server_config(tmp_path, port, embedded=True)
        with FleetServer(cfg) as srv:
            yield {"server": srv, "port": port, "password": enroller(srv.state_dir), "kind": broker_kind}
    else:
        users = {f"dev-{i:03d}": device_pw for i in range(200)}
        with mosquitto.Mosquitto(FLEET, users) as m:
            cfg = server_config(
                tmp_path, m.port, embedded=False, username=m.server_user, password=m.server_password
            )
            with FleetServer(cfg) as srv:
                yield {"server": srv, "port": m.port, "password": lambda _d: device_pw, "kind": broker_kind}
