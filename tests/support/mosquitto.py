"""Start a real Mosquitto on a free loopback port with a password file and per-device ACLs.

    with Mosquitto(fleet="f1", users={"dev-1": "pw", ...}, server_user="fleet", server_password="x") as m:
        m.port ...

Devices authenticate with username = device id; the ACL patterns (`%u`) let each one read only
its own `desired` (and the fleet's `roots`) and write only its own `status` and `online`.
Run as root, Mosquitto would drop to user `mosquitto`; `user root` in the config keeps it
able to read the 0600 files in our temp dir (as a normal user the setting is ignored).

With `tls=TlsFiles(ca, cert, key)` the listener speaks TLS and requires a client certificate
signed by `ca` (mTLS): the certificate CN is the MQTT username (`use_identity_as_username`), so
the same `%u` ACL applies, there is no password file and `users` may be empty.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import free_port, wait_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def available() -> bool:
    return os.path.exists(MOSQUITTO) and os.path.exists(MOSQUITTO_PASSWD)


def acl_text(fleet: str, server_user: str) -> str:
    base = f"edgekit/{fleet}"
    return (
        f"user {server_user}\ntopic readwrite edgekit/#\n\n"
        f"pattern read {base}/devices/%u/desired\n"
        f"pattern read {base}/roots\n"
        f"pattern write {base}/devices/%u/status\n"
        f"pattern write {base}/devices/%u/online\n"
    )


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for an mTLS listener: the CA that signs client certificates, the server's own."""

    ca: Path
    cert: Path
    key: Path


class Mosquitto:
    def __init__(
        self,
        fleet: str,
        users: dict[str, str],
        server_user: str = "fleet-server",
        server_password: str = "server-secret",
        port: int | None = None,
        tls: TlsFiles | None = None,
    ):
        self.fleet, self.users, self.tls = fleet, dict(users), tls
        self.server_user, self.server_password = server_user, server_password
        self.users[server_user] = server_password
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        if self.tls:
            auth = (
                f"cafile {self.tls.ca}\ncertfile {self.tls.cert}\nkeyfile {self.tls.key}\n"
                "require_certificate true\nuse_identity_as_username true\n"
            )
        else:
            passwd = self.dir / "passwd"
            # Plain text first, then hash every line in one call (-U): fast even for 5,000 devices.
            passwd.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
            subprocess.run([MOSQUITTO_PASSWD, "-U", str(passwd)], check=True, capture_output=True)
            auth = f"password_file {passwd}\n"
        (self.dir / "acl").write_text(acl_text(self.fleet, self.server_user))
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"{auth}"
            f"acl_file {self.dir / 'acl'}\n"
            "persistence false\n"
            "user root\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 0\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
        )
        self.log = open(self.dir / "mosquitto.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"mosquitto did not start: {(self.dir / 'mosquitto.log').read_text()}"
            ) from None
        return self

    def terminate(self) -> None:
        """Stop the broker process only (SIGTERM, then SIGKILL); keep its files and port."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def restart(self) -> None:
        """A broker restart: same port, password file and ACL; sessions and retained messages
        are gone (persistence is off), as after a crash of a broker without a persistent store."""
        self.terminate()
        self.start()

    def stop(self) -> None:
        self.terminate()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
