"""fleet.toml: defaults, file, `EDGEKIT_<SECTION>__<KEY>` env overrides (edgekit.config).

With no file at all `edgekit fleet serve` runs an embedded broker, SQLite and a local
artifact directory under `state_dir`. The embedded broker admits only enrolled devices
(`edgekit fleet devices enroll`) and the server's own user. Example for an external Mosquitto
with mTLS:

    [server]
    fleet = "store-pcs"
    state_dir = "/var/lib/edgekit-fleet"
    [broker]
    embedded = false
    host = "mqtt.example.com"
    port = 8883
    username = "fleet-server"
    password = "..."            # or EDGEKIT_BROKER__PASSWORD in the environment
    tls = true
    ca = "/etc/edgekit/ca.pem"             # also copied into every enrolment bundle
    cert = "/etc/edgekit/fleet-server.pem"   # client certificate (mTLS)
    key = "/etc/edgekit/fleet-server.key"
    public_url = "mqtts://mqtt.example.com:8883"  # what enrolment bundles tell devices
    [http]
    host = "0.0.0.0"
    port = 8080
    public_url = "https://cdn.example.com/edgekit"  # base of artifact URLs in manifests
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.config import home, load_config

SERVER_USER = "fleet-server"  # the server's MQTT username unless [broker] username says otherwise

DEFAULTS: dict[str, Any] = {
    "server": {
        "fleet": "default",
        "state_dir": "",  # empty: $EDGEKIT_HOME/fleet
        "channel": "stable",
        "manifest_ttl_days": 30,
        "tick_seconds": 0.5,  # rollout engine: timeouts and wave advances are checked this often
    },
    "broker": {
        "embedded": True,
        "host": "127.0.0.1",
        "port": 1883,
        "username": "",  # the server's own MQTT user; empty: SERVER_USER
        "password": "",  # empty with the embedded broker: a random one per start, never written
        "client_id": "",  # empty: edgekit-fleet-<fleet>
        "tls": False,
        "ca": "",
        "cert": "",
        "key": "",
        "allow_anonymous": False,  # embedded broker only: true turns auth, ACLs and id binding off
        "public_url": "",  # broker URL in enrolment bundles; empty: mqtt(s)://host:port
        "persistent_session": True,  # broker queues device reports while the server is down
    },
    "http": {"host": "127.0.0.1", "port": 8780, "public_url": ""},
    "admin": {"host": "127.0.0.1", "port": 8781},
}


def load(path: str | Path | None = None) -> dict[str, Any]:
    cfg = load_config(path, DEFAULTS)
    if not cfg["server"]["state_dir"]:
        cfg["server"]["state_dir"] = str(home() / "fleet")
    if not cfg["broker"]["client_id"]:
        cfg["broker"]["client_id"] = f"edgekit-fleet-{cfg['server']['fleet']}"
    if not cfg["http"]["public_url"]:
        cfg["http"]["public_url"] = f"http://{cfg['http']['host']}:{cfg['http']['port']}"
    return cfg


def state_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["server"]["state_dir"]).expanduser()


def server_user(cfg: dict[str, Any]) -> str:
    return str(cfg["broker"]["username"] or SERVER_USER)
