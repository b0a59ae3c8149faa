"""Start a real Mosquitto on a free loopback port with the configuration docs/fleet.md documents.

    with Mosquitto(fleet="f1", users={"dev-1": "pw", ...}, server_user="fleet", server_password="x") as m:
        m.port ...

The ACL, the password file (our own $7$ hashes) and the settings (no anonymous clients, client id
= username) come from fleet.mosquitto, what `edgekit fleet mosquitto-config` writes. Devices
authenticate with username = device id; the `%u` patterns let each one read only its own
`desired` (and the fleet's `roots`) and write only its own `status` and `online`.
Because the client id is the username, one user has one connection: a test that watches the
broker next to a running fleet server logs in as `observer_user` (read/write on the fleet, a
test-only user), never as the server.
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

from fleet import mosquitto as config
from fleet.credentials import hash_password
from tests.support.net import free_port, wait_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
OBSERVER = "test-observer"


def available() -> bool:
    return os.path.exists(MOSQUITTO)


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
        include_dir: Path | None = None,
    ):
        """`include_dir`: run with what `edgekit fleet mosquitto-config --out DIR` wrote instead
        of generating the password file and ACL here (`users` then only documents who is in it)."""
        self.fleet, self.devices, self.tls, self.include_dir = fleet, dict(users), tls, include_dir
        self.server_user, self.server_password = server_user, server_password
        self.observer_user, self.observer_password = OBSERVER, "observer-secret"
        self.users = {**self.devices, server_user: server_password, OBSERVER: self.observer_password}
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"{self._security()}"
            "persistence false\n"
            "user root\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
        )
        self.log = open(self.dir / "mosquitto.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port)
        except TimeoutError:
            self.terminate()
            log = self.log_text()  # before stop() removes the directory it is in
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {log}") from None
        return self

    def _security(self) -> str:
        if self.include_dir is not None:
            return f"include_dir {self.include_dir}\n"
        passwd: Path | None = None
        tls = ""
        if self.tls:
            tls = (
                f"cafile {self.tls.ca}\ncertfile {self.tls.cert}\nkeyfile {self.tls.key}\n"
                "require_certificate true\nuse_identity_as_username true\n"
            )
        else:
            passwd = self.dir / "passwd"
            passwd.write_text(config.passwd_text((u, hash_password(p)) for u, p in self.users.items()))
        acl = self.dir / "acl"
        observer = f"user {self.observer_user}\ntopic readwrite edgekit/{self.fleet}/#\n\n"
        acl.write_text(observer + config.acl_text(self.fleet, self.server_user, self.devices))
        return tls + config.conf_text(acl, passwd)

    def log_text(self) -> str:
        return (self.dir / "mosquitto.log").read_text(errors="replace")

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
