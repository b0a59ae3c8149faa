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
        "formats": ["onnx", "tflite"],  # artifact preference
        "threads": 0,
        "heartbeat_s": 30.0,
        "verify_on_start": True,
        "labels": {},
    },
    "server": {"enabled": True, "host": "127.0.0.1", "port": 8080, "max_body_mb": 64.0},
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
    "download": {"timeout_s": 30.0, "retries": 5, "base_url": "", "ca": "", "cert": "", "key": ""},
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
    if not a["device"]:
        raise ConfigError("agent.device is required (the device id)", hint='set [agent] device = "..."')
    if cfg["mqtt"]["enabled"] and not a["root"]:
        raise ConfigError("agent.root is required: the root.json this device trusts for updates")
    if cfg["mqtt"]["password_file"]:
        cfg["mqtt"]["password"] = Path(cfg["mqtt"]["password_file"]).read_text().strip()
    from agent.fallback import POLICIES

    for name, m in {
        "[fallback]": cfg["fallback"],
        **{f"[models.{k}]": v for k, v in cfg["models"].items()},
    }.items():
        pol = m.get("policy")
        if pol is not None and pol not in POLICIES:
            raise ConfigError(f"{name}: unknown policy {pol!r}; expected one of {', '.join(POLICIES)}")
    return cfg
