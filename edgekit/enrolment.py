"""The enrolment bundle: everything one device needs to join a fleet, in one directory.

Written by `edgekit fleet devices enroll DEVICE_ID --out DIR` (fleet.enrol), read by the agent
through `[agent] enrolment = "DIR"` (agent.enrolment):

    DIR/enrolment.json   this description (no secret in it)
    DIR/root.json        the fleet's current root of trust
    DIR/mqtt.password    the device's MQTT password (0600; the fleet keeps only its hash)
    DIR/ca.pem           the broker's CA, when the broker speaks TLS

The directory is 0700. File names inside are plain names, relative to the directory, so the
bundle can be copied anywhere (e.g. /etc/edgekit/enrolment on the device).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from edgekit import topics
from edgekit.errors import ConfigError

FILE = "enrolment.json"
MAX_FILE_BYTES = 64 * 1024
SCHEMES = {"mqtt": False, "mqtts": True}  # scheme -> TLS
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def _plain_name(v: str) -> str:
    if v in (".", ".."):
        raise ValueError("must be a file name inside the bundle")
    return v


FileName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,128}$"), AfterValidator(_plain_name)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class BrokerAccess(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    url: str = Field(max_length=2048)  # mqtt://host:port or mqtts://host:port
    username: Name
    password_file: FileName = "mqtt.password"
    ca: FileName | None = None
    protocol: Literal["3.1.1", "5"] | None = None  # None: the agent's default (the embedded broker is 3.1.1)
    desired_qos: Literal[0, 1] | None = None  # None: the agent's default (agent.mqtt.MqttSettings)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        broker_address(v)
        return v

    def address(self) -> tuple[str, int, bool]:
        return broker_address(self.url)


class Enrolment(BaseModel):
    """enrolment.json. Unknown fields are ignored: a newer fleet may add some."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    format: Literal[1] = 1
    fleet: Name
    device: Name
    root: FileName = "root.json"
    broker: BrokerAccess

    @field_validator("fleet", "device")
    @classmethod
    def _topic_level(cls, v: str) -> str:
        return topics.check_name("name", v)


def broker_address(url: str) -> tuple[str, int, bool]:
    """mqtt(s)://host[:port] -> (host, port, tls); anything else is a ValueError naming it."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    try:
        port = DEFAULT_PORTS[parts.scheme] if parts.port is None else parts.port
    except ValueError as e:
        raise ValueError(f"broker URL {url!r}: {e}") from None
    if port == 0 or not parts.hostname or parts.path not in ("", "/") or parts.username or parts.query:
        raise ValueError(f"broker URL {url!r}: expected mqtt(s)://host[:port] and nothing else")
    return parts.hostname, port, SCHEMES[parts.scheme]


@dataclass(frozen=True)
class Bundle:
    """An enrolment read from disk, with its files resolved."""

    dir: Path
    enrolment: Enrolment

    @property
    def root(self) -> Path:
        return self.dir / self.enrolment.root

    @property
    def password_file(self) -> Path:
        return self.dir / self.enrolment.broker.password_file

    @property
    def ca(self) -> Path | None:
        return self.dir / self.enrolment.broker.ca if self.enrolment.broker.ca else None


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def write_bundle(out: Path, enrolment: Enrolment, *, root: bytes, password: str, ca: bytes | None) -> Bundle:
    if (ca is None) != (enrolment.broker.ca is None):
        raise ValueError("a CA file name needs CA bytes and vice versa")
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    _write(out / enrolment.broker.password_file, password.encode() + b"\n", 0o600)
    _write(out / enrolment.root, root, 0o644)
    if ca is not None and enrolment.broker.ca:
        _write(out / enrolment.broker.ca, ca, 0o644)
    # enrolment.json last: a bundle that has it is complete.
    _write(out / FILE, (enrolment.model_dump_json(indent=2) + "\n").encode(), 0o644)
    return Bundle(out, enrolment)


def _describe(e: Exception) -> str:
    if isinstance(e, ValidationError):
        return "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors(include_url=False))
    return str(e)[:200]


def read_bundle(path: str | Path) -> Bundle:
    """The bundle in directory `path`; a missing or malformed one is a ConfigError naming it."""
    d = Path(path).expanduser()
    f = d / FILE
    try:
        raw = f.read_bytes()[: MAX_FILE_BYTES + 1]
    except OSError as e:
        raise ConfigError(
            f"no enrolment bundle at {d}: {e.strerror}",
            hint="create one with: edgekit fleet devices enroll DEVICE_ID --out DIR",
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{f} is larger than {MAX_FILE_BYTES} bytes: not an enrolment file")
    try:
        enrolment = Enrolment.model_validate(json.loads(raw))
    except (ValueError, RecursionError) as e:  # JSON, UTF-8 or schema (ValidationError)
        raise ConfigError(f"invalid enrolment bundle {f}: {_describe(e)}") from None
    bundle = Bundle(d, enrolment)
    for needed in (bundle.root, bundle.password_file, *([bundle.ca] if bundle.ca else [])):
        if not needed.is_file():
            raise ConfigError(f"enrolment bundle {d} is incomplete: {needed.name} is missing")
    return bundle
