"""agent.toml: defaults, loading (TOML < EDGEKIT_<SECTION>__<KEY> env) and checks. See deploy/agent.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.config import load_config
from edgekit.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "agent": {
        "device": "",
        "fleet": "default",
        "data_dir": "/var/lib/edgekit-agent",
        "root": "",  # root.json the device was enrolled with (root of trust)
        "enrolment": "",  # bundle dir from `edgekit fleet devices enroll` (agent.enrolment)
        "formats": ["onnx", "tflite"],  # artifact preference
        "threads": 0,
        "heartbeat_s": 30.0,
        "verify_on_start": True,
        "labels": {},
    },
    "server": {
        "enabled": True,
        "host": "127.0.0.1",
        "port": 8080,
        "max_body_mb": 64.0,
        # bearer token for the repository routes (load/unload); empty = those routes are disabled
        "admin_token": "",
        "admin_token_file": "",
    },
    "mqtt": {
        "enabled": True,
        "host": "127.0.0.1",
        "port": 1883,
        "protocol": "5",
        "client_id": "",
        "username": "",
        "password": "",
        "password_file": "",
        "tls": False,
        "ca": "",
        "cert": "",
        "key": "",
        "keepalive": 30,
        "session_expiry_s": 604800,
    },
    "download": {
        "timeout_s": 30.0,  # per network read
        "retries": 5,
        "base_url": "",
        "ca": "",
        "cert": "",
        "key": "",
        # whole-download bounds (agent.download_limits): a 1 byte/s server must not hold the update thread
        "deadline_s": 3600.0,
        "min_bytes_per_s": 1024.0,
        "slow_window_s": 60.0,
        "max_redirects": 5,
    },
    "cloud": {
        "url": "",
        "timeout_ms": 2000.0,
        "retries": 1,
        "breaker_failures": 3,
        "breaker_reset_s": 10.0,
        "binary": True,
    },
    "fallback": {"policy": "local-first"},
    "models": {},  # [models.NAME] policy=..., confidence_threshold=..., path=... (preinstalled)
}


def load_agent_config(path: str | Path | None) -> dict[str, Any]:
    cfg = load_config(path, DEFAULTS)
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
    from agent.fallback import POLICIES

    for name, m in {
        "[fallback]": cfg["fallback"],
        **{f"[models.{k}]": v for k, v in cfg["models"].items()},
    }.items():
        pol = m.get("policy")
        if pol is not None and pol not in POLICIES:
            raise ConfigError(f"{name}: unknown policy {pol!r}; expected one of {', '.join(POLICIES)}")
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
