"""The Mosquitto configuration edgekit documents and tests: ACL file, password file, settings.

`edgekit fleet mosquitto-config` writes these from the fleet's enrolled devices; the test suite's
Mosquitto (tests/support/mosquitto.py) is started from the same functions, and docs/fleet.md
shows their output, so what is documented is what is tested.

- `use_username_as_clientid true`: the client id is the username, so a device that sends another
  device's client id cannot take over that device's session (which would disconnect it and fire
  its Last Will, marking it offline). One connection per username: give every other tool its own
  MQTT user.
- Rules that name the device (%u) are `pattern` lines. Rules that do not (`roots`) must be `topic`
  lines in each device's `user` block: a `pattern` without %u or %c makes Mosquitto 2 warn, and a
  `topic` line before any `user` line applies to anonymous clients only (both checked on 2.0.11).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgekit import topics
from fleet import config as fleet_config
from fleet.acl import DEVICE, DEVICE_RULES, server_filter
from fleet.credentials import broker_inputs, hash_password

SETTINGS = (
    "allow_anonymous false",
    "use_username_as_clientid true",
    # The fleet server acknowledges a status only after committing it (fleet.ingest), so its
    # session holds every report of a rollout burst unacknowledged for a moment. Mosquitto's
    # defaults (20 in flight, 1,000 queued per client) would throttle ingestion to one small
    # batch per commit and then DROP reports beyond the queue: no in-flight cap, a deep queue.
    "max_inflight_messages 0",
    "max_queued_messages 100000",
)


def acl_text(fleet: str, server_user: str, devices: Iterable[str]) -> str:
    base = f"{topics.PREFIX}/{topics.check_name('fleet', fleet)}"
    lines = [f"user {server_user}", f"topic readwrite {server_filter(fleet)}", ""]
    plain = [(a, p) for a, p in DEVICE_RULES if DEVICE not in p]
    for device in sorted(set(devices)):
        lines.append(f"user {topics.check_name('device id', device)}")
        lines.extend(f"topic {a.value} {base}/{p}" for a, p in plain)
        lines.append("")
    lines.extend(f"pattern {a.value} {base}/{p}" for a, p in DEVICE_RULES if DEVICE in p)
    return "\n".join(lines) + "\n"


def passwd_text(hashes: Iterable[tuple[str, str]]) -> str:
    """`user:$7$...` lines (fleet.credentials writes Mosquitto's own hash format)."""
    return "".join(f"{user}:{h}\n" for user, h in sorted(hashes))


def conf_text(acl_file: Path, password_file: Path | None) -> str:
    """The settings for mosquitto.conf (the listener lines are the deployment's own)."""
    auth = [f"password_file {password_file}"] if password_file else []
    return "\n".join([*SETTINGS, *auth, f"acl_file {acl_file}"]) + "\n"


def write_config(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write `acl`, `passwd` and `edgekit.conf` (include it from mosquitto.conf) for the fleet's
    enrolled devices and the server's own user; re-run after every enrolment, then reload
    Mosquitto (SIGHUP)."""
    b = cfg["broker"]
    user = fleet_config.server_user(cfg)
    _, creds = broker_inputs(cfg, "Mosquitto needs")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    acl, passwd = out / "acl", out / "passwd"
    hashes = [(c.device, c.hash) for c in creds] + [(user, hash_password(b["password"]))]
    files = {
        acl: acl_text(cfg["server"]["fleet"], user, [c.device for c in creds]),
        passwd: passwd_text(hashes),
        out / "edgekit.conf": conf_text(acl.resolve(), passwd.resolve()),
    }
    for path, text in files.items():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if path == passwd else 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    return {
        "dir": str(out),
        "devices": len(creds),
        "server_user": user,
        "files": sorted(p.name for p in files),
    }
