from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet.credentials import open_store
from tests.support.devices import DevicePool


def wait_for(pred: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def enroller(state_dir: Path) -> Callable[[str], str]:
    """device -> its MQTT password, enrolling it in the fleet's credential store on first use
    (what `edgekit fleet devices enroll` does); the embedded broker admits nobody else."""
    passwords: dict[str, str] = {}

    def password(device: str) -> str:
        if device not in passwords:
            store = open_store(state_dir)
            try:
                passwords[device] = store.issue(device)
            finally:
                store.close()
        return passwords[device]

    return password


def fleet_pool(fleet_env: dict[str, Any], **kw: Any) -> DevicePool:
    """Simulated devices on the broker of the `fleet_env` fixture (tests/fleet/conftest.py),
    trusting its fleet's root; `kw` goes to DevicePool (report_delay 0.05 s unless given)."""
    srv = fleet_env["server"]
    kw.setdefault("report_delay", 0.05)
    return DevicePool(
        srv.fleet, srv.keys.current_root(), "127.0.0.1", fleet_env["port"], fleet_env["password"], **kw
    )
