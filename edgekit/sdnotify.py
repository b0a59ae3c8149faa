"""systemd's readiness and watchdog protocol (sd_notify(3)), without libsystemd.

Under `Type=notify` systemd passes NOTIFY_SOCKET (a filesystem path, or `@name` for the abstract
namespace) and expects one datagram per state change: READY=1 once the service answers, STOPPING=1
at shutdown, and, with `WatchdogSec=`, WATCHDOG=1 more often than WATCHDOG_USEC or it restarts the
unit. Outside systemd NOTIFY_SOCKET is unset and every call here is a no-op, so the daemon calls
them unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | None:
    """NOTIFY_SOCKET as an AF_UNIX address: `@x` is the abstract name `\\0x`; None when unusable."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. vsock:... (systemd >= 253 in VMs): not for a service on the host


def watchdog_period(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of WATCHDOG_USEC (what sd_watchdog_enabled(3)
    advises), or None when no watchdog is asked of this process."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (owner and owner != str(pid)):
        return None  # the variable was meant for another process (e.g. our parent)
    return usec / 2_000_000


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `state` ("READY=1", "STOPPING=1", "STATUS=...", ...) to the service manager.
    False when not under systemd or the socket is gone: a notification is never worth a crash."""
    value = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    address = socket_address(value)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(state.encode())
        return True
    except OSError as e:
        log.debug("sd_notify %r to %s failed: %s", state, value, e)
        return False


class Watchdog:
    """Pings WATCHDOG=1 every `period` seconds while `healthy()` says so. A wedged daemon stops
    pinging and systemd restarts it; a thread that pinged unconditionally would hide exactly that."""

    def __init__(self, period: float, healthy: Callable[[], bool], env: Mapping[str, str] | None = None):
        self.period = period
        self.healthy = healthy
        self.env = env
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgekit-watchdog", daemon=True)

    @classmethod
    def from_env(cls, healthy: Callable[[], bool], env: Mapping[str, str] | None = None) -> Watchdog | None:
        e = os.environ if env is None else env
        period = watchdog_period(e, os.getpid())
        return None if period is None else cls(period, healthy, env)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                ok = self.healthy()
            except Exception as e:  # a failing probe is an unhealthy daemon, not a dead watchdog
                log.warning("watchdog health check failed: %s", e)
                ok = False
            if ok:
                notify("WATCHDOG=1", self.env)
            else:
                log.warning("daemon unhealthy: withholding the systemd watchdog ping")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
