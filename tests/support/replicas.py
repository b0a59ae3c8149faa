"""`edgekit fleet serve` replicas as real processes on one database and one broker, for the
replica and fault tests (tests/fleet/test_replicas.py, tests/fleet/test_replica_faults.py).

    a = Replica("a", tmp, state, db_url, fleet, broker_port, user, password, lease=3.0).start()
    a.health(token)["leader"]

Every replica of a fleet uses the same broker client id (the default, edgekit-fleet-<fleet>): the
persistent session, with the reports queued or unacknowledged in it, moves with the lease.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from tests.support.net import free_ports
from tests.support.procs import stop_process

REPO = Path(__file__).resolve().parents[2]


def sequences(payloads: list[bytes]) -> dict[int, set[bytes]]:
    """A device's `desired` payloads by the sequence they carry: one payload per sequence, or a
    device was offered two different manifests for one sequence."""
    out: dict[int, set[bytes]] = defaultdict(set)
    for p in payloads:
        if p:
            out[json.loads(p)["signed"]["sequence"]].add(p)
    return out


class Replica:
    def __init__(
        self,
        name: str,
        tmp: Path,
        state: Path,
        db: str,
        fleet: str,
        broker_port: int,
        username: str,
        password: str,
        lease: float,
        env: dict[str, str] | None = None,
    ):
        http_port, self.admin_port = free_ports(2)
        self.name = name
        self.env = env or {}
        self.config = tmp / f"{name}.toml"
        self.config.write_text(
            f'[server]\nfleet = "{fleet}"\nstate_dir = "{state}"\ndb = "{db}"\n'
            f'replica_id = "{name}"\nlease_seconds = {lease}\ntick_seconds = 0.1\n'
            f'[broker]\nembedded = false\nhost = "127.0.0.1"\nport = {broker_port}\n'
            f'username = "{username}"\npassword = "{password}"\n'
            f"[http]\nport = {http_port}\n[admin]\nport = {self.admin_port}\n"
        )
        self.log_path = tmp / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Replica:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgekit", "fleet", "serve", "--config", str(self.config)],
            cwd=REPO,
            stdout=self.log,
            stderr=self.log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def api(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.admin_port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def health(self, token: str) -> dict[str, Any] | None:
        try:
            with self.api(token) as c:
                r = c.get("/api/health")
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def leads(self, token: str) -> bool:
        return (self.health(token) or {}).get("leader") is True

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        self.log.close()
