"""fleet.toml as a typed model: defaults, file, `EDGEKIT_<SECTION>__<KEY>` env overrides (edgekit.settings).

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

A NATS cluster (fleet.nats; docs/fleet.md "Scaling out") and artifacts in S3
(fleet.artifact_store):

    [broker]
    kind = "nats"                  # "embedded" (default) | "mosquitto" | "nats"
    urls = ["mqtt://nats-1:1883", "mqtt://nats-2:1883", "mqtt://nats-3:1883"]
    nats_dir = "/etc/nats/edgekit" # where `edgekit fleet nats-config` wrote accounts.conf
    [artifacts]
    backend = "s3"
    bucket = "edgekit-artifacts"
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from edgekit import topics
from edgekit.brokers import check_urls
from edgekit.config import home
from edgekit.settings import FileSettings, Section, load_settings
from fleet.artifact_store import ArtifactsSection

SERVER_USER = "fleet-server"  # the server's MQTT username unless [broker] username says otherwise

Port = Annotated[int, Field(ge=0, le=65535)]


class ServerSection(Section):
    fleet: Annotated[str, AfterValidator(lambda v: topics.check_name("fleet", v))] = "default"
    state_dir: str = ""  # empty: $EDGEKIT_HOME/fleet
    channel: str = "stable"
    manifest_ttl_days: int = Field(30, gt=0)
    tick_seconds: float = Field(
        0.5, gt=0
    )  # rollout engine: timeouts and wave advances are checked this often
    # "": SQLite at <state_dir>/fleet.db; or a path, sqlite:///path, postgresql://user:pw@host/db
    db: str = ""
    # replicas on one PostgreSQL: the leader (tick, outbox, device reports) is replaced this fast
    lease_seconds: float = Field(10.0, gt=0)
    replica_id: str = ""  # unique per replica; empty: <host>:<admin port>:<state_dir>
    # offer binary deltas against the blob devices run (fleet.deltas); false: full artifacts only
    deltas: bool = True


class BrokerSection(Section):
    # "": from `embedded` (true: "embedded", false: "mosquitto"), the key older files use
    kind: Literal["", "embedded", "mosquitto", "nats"] = ""
    embedded: bool = True
    host: str = "127.0.0.1"
    port: Port = 1883
    # mqtt(s)://host:port of every node of a clustered broker, tried in turn (edgekit.brokers)
    urls: Annotated[list[str], AfterValidator(check_urls)] = Field(default_factory=list)
    nats_dir: str = ""  # kind = "nats": enrolment and revocation rewrite <nats_dir>/accounts.conf
    username: str = ""  # the server's own MQTT user; empty: SERVER_USER
    password: str = ""  # empty with the embedded broker: a random one per start, never written
    client_id: str = ""  # empty: edgekit-fleet-<fleet>
    tls: bool = False
    ca: str = ""
    cert: str = ""
    key: str = ""
    allow_anonymous: bool = False  # embedded broker only: true turns auth, ACLs and id binding off
    public_url: str = ""  # broker URL in enrolment bundles; empty: mqtt(s)://host:port
    persistent_session: bool = True  # broker queues device reports while the server is down

    @model_validator(mode="after")
    def _kind(self) -> BrokerSection:
        if not self.kind:
            self.kind = "embedded" if self.embedded else "mosquitto"
        elif "embedded" in self.model_fields_set and self.embedded != (self.kind == "embedded"):
            raise ValueError(f'embedded = {str(self.embedded).lower()} contradicts kind = "{self.kind}"')
        self.embedded = self.kind == "embedded"
        return self


class HttpSection(Section):
    host: str = "127.0.0.1"
    port: Port = 8780
    public_url: str = ""


class AdminSection(Section):
    host: str = "127.0.0.1"
    port: Port = 8781


class FleetSettings(FileSettings):
    server: ServerSection = Field(default_factory=ServerSection)
    broker: BrokerSection = Field(default_factory=BrokerSection)
    http: HttpSection = Field(default_factory=HttpSection)
    admin: AdminSection = Field(default_factory=AdminSection)
    artifacts: ArtifactsSection = Field(default_factory=ArtifactsSection)
    # No longer read (plain-text passwords): accepted so the server can say so (fleet.broker).
    broker_users: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


DEFAULTS: dict[str, Any] = FleetSettings.model_construct().to_dict()  # no file, no environment


def load(path: str | Path | None = None) -> dict[str, Any]:
    cfg = load_settings(FleetSettings, path, "fleet config").to_dict()
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


def file_problems(cfg: dict[str, Any]) -> list[str]:
    """Files fleet.toml names that are missing (TLS material of an external broker)."""
    b = cfg["broker"]
    keys = ("ca", "cert", "key") if b["tls"] else ()
    return [f"broker.{k} {b[k]}: no such file" for k in keys if b[k] and not Path(b[k]).is_file()]
