"""Free loopback ports and waiting for a listener."""

from __future__ import annotations

import socket
import time

from edgekit.launch import free_ports


def free_port() -> int:
    return free_ports(1)[0]


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
