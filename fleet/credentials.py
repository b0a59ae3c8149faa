"""Per-device MQTT credentials: a random password per device, stored only as a salted hash.

<state_dir>/credentials.db (SQLite, WAL, 0600) holds one row per enrolled device. It is its own
file, not a table of fleet.db: the embedded broker checks every CONNECT against it from its own
thread without waiting for the fleet database's lock, and `edgekit fleet devices enroll` writes
it from another process while the server runs (a new device can connect at once).

The hash is Mosquitto's own format (`$7$<iterations>$<salt b64>$<PBKDF2-HMAC-SHA512 b64>`), so
the same rows render as a Mosquitto password file (fleet.mosquitto). The iteration count is
Mosquitto's default: the passwords are 256-bit random tokens, so the hash only has to be one-way,
not slow; a slow hash would only slow down every device's CONNECT.

`nats_hash` is the same password as bcrypt, the only format nats-server reads (fleet.nats renders
accounts.conf from it). It is filled when bcrypt is installed (edgekit[scale]); a device enrolled
without it gets one at its next enrolment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgekit import topics
from fleet.errors import FleetError

log = logging.getLogger(__name__)

ITERATIONS = 101  # mosquitto_passwd's default for $7$
SALT_BYTES = 12
MAX_PASSWORD_BYTES = 1024  # longer CONNECT passwords are refused before hashing
FILE_NAME = "credentials.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS device_credentials (
    device TEXT PRIMARY KEY,
    hash TEXT NOT NULL,            -- $7$ PBKDF2-SHA512 (Mosquitto's password-file format)
    issued REAL NOT NULL);
"""
NATS_COLUMN = "nats_hash"  # bcrypt of the same password (fleet.nats), NULL without bcrypt


def new_password() -> str:
    return secrets.token_urlsafe(32)


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str | bytes | None, encoded: str) -> bool:
    """True only for the password `encoded` was made from; a malformed hash is a plain False."""
    if password is None:
        return False
    pw = password if isinstance(password, bytes) else password.encode()
    if len(pw) > MAX_PASSWORD_BYTES:
        return False
    try:
        _, kind, iterations, salt, digest = encoded.split("$")
        n = int(iterations)
        if kind != "7" or not 1 <= n <= 1_000_000:
            return False
        expected = base64.b64decode(digest, validate=True)
        got = hashlib.pbkdf2_hmac("sha512", pw, base64.b64decode(salt, validate=True), n)
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, expected)


@dataclass(frozen=True)
class Credential:
    device: str
    hash: str
    issued: float
    nats_hash: str | None = None


class CredentialStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Created 0600 before SQLite opens it: the hashes are never world-readable.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)
        columns = {r[1] for r in self._conn.execute("PRAGMA table_info(device_credentials)")}
        if NATS_COLUMN not in columns:  # a store from before NATS support
            self._conn.execute(f"ALTER TABLE device_credentials ADD COLUMN {NATS_COLUMN} TEXT")

    def issue(self, device: str) -> str:
        """A new random password for `device` (enrol, or re-enrol: the old one stops working)."""
        password = new_password()
        self.set_password(device, password)
        return password

    def set_password(self, device: str, password: str) -> None:
        topics.check_name("device id", device)
        with self._lock:
            self._conn.execute(
                "INSERT INTO device_credentials (device, hash, issued, nats_hash) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (device) DO UPDATE SET hash = excluded.hash, issued = excluded.issued, "
                "nats_hash = excluded.nats_hash",
                (device, hash_password(password), time.time(), _nats_hash(password)),
            )

    def has(self, device: str) -> bool:
        with self._lock:
            rows = self._conn.execute("SELECT 1 FROM device_credentials WHERE device = ?", (device,))
            return bool(rows.fetchall())

    def verify(self, device: str | None, password: str | bytes | None) -> bool:
        if not device or password is None:
            return False
        with self._lock:
            # fetchall: the statement is finished at once, so this long-lived connection holds
            # no read snapshot between CONNECTs (it must see every enrolment and revocation).
            rows = self._conn.execute(
                "SELECT hash FROM device_credentials WHERE device = ?", (device,)
            ).fetchall()
        return bool(rows) and check_password(password, rows[0][0])

    def revoke(self, device: str) -> bool:
        with self._lock:
            cur = self._conn.execute("DELETE FROM device_credentials WHERE device = ?", (device,))
        return cur.rowcount > 0

    def list(self) -> list[Credential]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT device, hash, issued, nats_hash FROM device_credentials ORDER BY device"
            ).fetchall()
        return [Credential(*r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _nats_hash(password: str) -> str | None:
    from fleet import nats

    try:
        return nats.hash_password(password)
    except FleetError:  # no bcrypt: fine for Mosquitto and the embedded broker
        return None


def open_store(state_dir: Path) -> CredentialStore:
    try:
        return CredentialStore(Path(state_dir) / FILE_NAME)
    except sqlite3.DatabaseError as e:
        raise FleetError(f"cannot open the credential store {Path(state_dir) / FILE_NAME}: {e}") from e


def broker_inputs(cfg: dict, who_needs: str) -> tuple[str, list[Credential]]:
    """What a broker's generated config needs: the fleet server's own password (refused when
    empty: "`who_needs` the fleet server's own password") and every enrolled device's credentials."""
    from fleet import config as fleet_config

    password = str(cfg["broker"]["password"])
    if not password:
        raise FleetError(
            f"[broker] password is empty: {who_needs} the fleet server's own password",
            hint="set [broker] username and password (or EDGEKIT_BROKER__PASSWORD) in fleet.toml",
        )
    store = open_store(fleet_config.state_dir(cfg))
    try:
        return password, store.list()
    finally:
        store.close()
