"""agent.toml as a typed model (edgekit.settings: TOML < EDGEKIT_<SECTION>__<KEY> env), the checks
that need more than one key, and the dict the daemon reads. See deploy/agent.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from agent import versions
from agent.fallback import POLICIES
from edgekit import topics
from edgekit.brokers import check_urls
from edgekit.errors import ConfigError, EdgekitError
from edgekit.protocol import Labels
from edgekit.settings import FileSettings, Section, load_settings

PolicyName = Literal[POLICIES]  # type: ignore[valid-type]
Port = Annotated[int, Field(ge=0, le=65535)]


def _topic_name(kind: str):
    def check(value: str) -> str:
        return topics.check_name(kind, value) if value else value  # "" = filled by the enrolment

    return AfterValidator(check)


class AgentSection(Section):
    device: Annotated[str, _topic_name("device id")] = ""
    fleet: Annotated[str, _topic_name("fleet")] = "default"
    data_dir: str = "/var/lib/edgekit-agent"
    root: str = ""  # root.json the device was enrolled with (root of trust)
    enrolment: str = ""  # bundle dir from `edgekit fleet devices enroll` (agent.enrolment)
    formats: list[str] = Field(default_factory=lambda: ["onnx", "tflite"])  # artifact preference
    threads: int = Field(0, ge=0)  # onnxruntime intra-op threads (0: one per core); LiteRT threads
    # runtime tuning (agent.models.RuntimeTuning): 0 = onnxruntime's default
    inter_op_threads: int = Field(0, ge=0)
    memory_arena: bool = True  # false: activation memory is returned after each run (less RSS)
    warmup: bool = True  # one run on zeros before a model is served
    heartbeat_s: float = Field(30.0, gt=0)
    verify_on_start: bool = True
    labels: Labels = Field(default_factory=dict)  # the wire rules of the `online` message
    # shadow canary (agent.shadow): share of answered requests mirrored to a model's shadow
    # version, and how many may wait for it (more are dropped, and counted)
    shadow_sample: float = Field(0.5, ge=0, le=1)
    shadow_queue: int = Field(4, ge=1, le=1024)
    # drift telemetry (agent.drift): the share of wall time summarising served tensors may take;
    # under load a sample of requests is summarised. 1: every request; 0: none
    drift_share: float = Field(0.005, ge=0, le=1)


class ServerSection(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 8080
    max_body_mb: float = Field(64.0, gt=0)
    # bearer token for the repository routes (load/unload); empty = those routes are disabled
    admin_token: str = ""
    admin_token_file: str = ""


class MqttSection(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 1883
    # mqtt(s)://host:port of every node of a clustered broker, tried in turn when the connection
    # drops (edgekit.brokers); empty: host and port
    urls: Annotated[list[str], AfterValidator(check_urls)] = Field(default_factory=list)
    # 3.1.1 is spoken by every broker edgekit runs with (the embedded amqtt broker and NATS speak
    # nothing else); "5" adds a session expiry and needs Mosquitto, EMQX, HiveMQ, ...
    protocol: Annotated[Literal["3.1.1", "5"], BeforeValidator(str)] = "3.1.1"
    client_id: str = ""
    username: str = ""
    password: str = ""
    password_file: str = ""
    tls: bool = False  # the only switch for TLS: ca/cert/key are used only when it is true
    ca: str = ""
    cert: str = ""
    key: str = ""
    keepalive: int = Field(30, gt=0)
    session_expiry_s: int = Field(604800, ge=0)  # MQTT 5 only
    # QoS of the retained `desired`/`roots` subscriptions (agent.mqtt: 0 loses nothing there);
    # an enrolment bundle of a NATS fleet sets 0
    desired_qos: Literal[0, 1] = 1


class DownloadSection(Section):
    timeout_s: float = Field(30.0, gt=0)  # per network read
    retries: int = Field(5, ge=0)
    base_url: str = ""
    ca: str = ""
    cert: str = ""
    key: str = ""
    # whole-download bounds (agent.download_limits): a 1 byte/s server must not hold the update thread
    deadline_s: float = 3600.0
    min_bytes_per_s: float = 1024.0
    slow_window_s: float = 60.0
    max_redirects: int = 5


class CloudSection(Section):
    url: str = ""
    timeout_ms: float = Field(2000.0, gt=0)
    retries: int = Field(1, ge=0)
    breaker_failures: int = Field(3, ge=1)
    breaker_reset_s: float = Field(10.0, gt=0)
    binary: bool = True


class PolicySection(Section):
    """[fallback] and [models.NAME]: the fields of agent.fallback.Policy (policy = its mode)."""

    policy: PolicyName | None = None
    confidence_threshold: float | None = Field(None, ge=0, le=1)
    local_deadline_ms: float | None = Field(None, gt=0)
    cloud_deadline_ms: float | None = Field(None, gt=0)
    cloud_model: str | None = None
    scores_output: str | None = None


class FallbackSection(PolicySection):
    policy: PolicyName | None = "local-first"


def _version_policy(raw: Any) -> Any:
    try:
        versions.parse_policy(raw, "version_policy")
    except ConfigError as e:  # pydantic reports ValueErrors with the key path
        raise ValueError(str(e).removeprefix("version_policy: ")) from None
    return raw


class BatchingSection(Section):
    """[models.NAME] batching = {...}: the dynamic batcher (agent.batcher), for models with a batch axis."""

    max_batch_size: int = Field(32, ge=1)  # samples per run
    max_queue_delay_us: int = Field(500, ge=0)  # how long the oldest request may wait for company
    preferred_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _valid(self) -> BatchingSection:
        from agent.batcher import BatchingConfig  # its rules: one home for them

        BatchingConfig(self.max_batch_size, self.max_queue_delay_us, tuple(self.preferred_batch_sizes))
        return self


class ModelSection(PolicySection):
    path: str | None = None  # a model shipped with the box, used until an update replaces it
    version: str | None = None
    # versions loaded side by side: {latest = N} | {specific = [...]} | "all" (agent.versions)
    version_policy: Annotated[str | dict[str, Any] | None, AfterValidator(_version_policy)] = None
    batching: BatchingSection | None = None  # absent: every request runs on its own


class AgentSettings(FileSettings):
    agent: AgentSection = Field(default_factory=AgentSection)
    server: ServerSection = Field(default_factory=ServerSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    download: DownloadSection = Field(default_factory=DownloadSection)
    cloud: CloudSection = Field(default_factory=CloudSection)
    fallback: FallbackSection = Field(default_factory=FallbackSection)
    models: dict[str, ModelSection] = Field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The nested dict the daemon reads; policy tables keep only the keys that were set
        (a model's unset key falls back to [fallback], not to None)."""
        out = self.model_dump(exclude={"fallback", "models"})
        out["fallback"] = self.fallback.model_dump(exclude_none=True)
        out["models"] = {k: m.model_dump(exclude_unset=True) for k, m in self.models.items()}
        return out


DEFAULTS: dict[str, Any] = AgentSettings.model_construct().to_dict()  # no file, no environment


def load_agent_config(path: str | Path | None) -> dict[str, Any]:
    cfg = load_settings(AgentSettings, path, "agent config").to_dict()
    a = cfg["agent"]
    if a["enrolment"]:
        from agent.enrolment import apply_enrolment

        apply_enrolment(cfg, DEFAULTS)
    if not a["device"]:
        raise ConfigError("agent.device is required (the device id)", hint='set [agent] device = "..."')
    if cfg["mqtt"]["enabled"] and not a["root"]:
        raise ConfigError("agent.root is required: the root.json this device trusts for updates")
    if cfg["mqtt"]["password_file"]:
        try:
            cfg["mqtt"]["password"] = Path(cfg["mqtt"]["password_file"]).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read mqtt.password_file {cfg['mqtt']['password_file']}: {e}") from None
    _check_download_limits(cfg["download"])
    cfg["server"]["admin_token"] = admin_token(cfg["server"]) or ""
    return cfg


def _check_download_limits(section: dict[str, Any]) -> None:
    from pydantic import ValidationError

    from agent.download_limits import DownloadLimits

    try:
        DownloadLimits.from_config(section)
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"[download]: {bad}") from None


def admin_token(server: dict[str, Any]) -> str | None:
    """The repository routes' bearer token from a [server] section (admin_token or admin_token_file)."""
    from agent.admin_auth import MIN_TOKEN_CHARS

    token, path = str(server.get("admin_token") or ""), str(server.get("admin_token_file") or "")
    if path:
        try:
            token = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read server.admin_token_file {path}: {e}") from None
    if token and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"server.admin_token is {len(token)} characters; use at least {MIN_TOKEN_CHARS}",
            hint='e.g. python -c "import secrets; print(secrets.token_urlsafe(32))"',
        )
    return token or None


def read_root(cfg: dict[str, Any]) -> Any:
    """The root of trust named by agent.root (edgekit.trust.Root), or a one-line ConfigError."""
    from edgekit.trust import load_trusted_root

    path = cfg["agent"]["root"]
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(
            f"agent.root {path}: {e.strerror or e}",
            hint="copy the root.json from the fleet server (or set [agent] enrolment = BUNDLE_DIR)",
        ) from None
    return load_trusted_root(raw)


def file_problems(cfg: dict[str, Any]) -> list[str]:
    """What would stop the daemon that the keys' types cannot show: files named by the
    configuration that are missing or unreadable. Checked before anything is written."""
    out = []
    if cfg["mqtt"]["enabled"]:
        try:
            read_root(cfg)
        except EdgekitError as e:
            out.append(str(e).splitlines()[0])
        m = cfg["mqtt"]
        for key in ("ca", "cert", "key") if m["tls"] else ():
            if m[key] and not Path(m[key]).is_file():
                out.append(f"mqtt.{key} {m[key]}: no such file")
    for name, model in cfg["models"].items():
        if model.get("path") and not Path(model["path"]).is_file():
            out.append(f"models.{name}.path {model['path']}: no such file")
    return out
