"""TOML config files with environment overrides.

Precedence (lowest to highest): built-in defaults < TOML file < environment variables
(`EDGEKIT_<SECTION>__<KEY>`, e.g. `EDGEKIT_MQTT__HOST=broker.local`) < explicit CLI flags.
"""

from __future__ import annotations

import copy
import json
import os
import tomllib
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError

ENV_PREFIX = "EDGEKIT_"


def home() -> Path:
    """Where edgekit keeps caches and toolchains (`EDGEKIT_HOME`, default ~/.cache/edgekit)."""
    return Path(os.environ.get("EDGEKIT_HOME", Path.home() / ".cache" / "edgekit")).expanduser()


def _coerce(text: str) -> Any:
    # Env values are strings; accept JSON literals so numbers, booleans and lists work too.
    try:
        return json.loads(text)
    except ValueError:
        return text


def load_config(
    path: str | Path | None, defaults: dict[str, Any], env_prefix: str = ENV_PREFIX
) -> dict[str, Any]:
    cfg = copy.deepcopy(defaults)
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {p}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"invalid TOML in {p}: {e}") from e
        _merge(cfg, data, where=str(p))
    for key, value in os.environ.items():
        if not key.startswith(env_prefix) or "__" not in key:
            continue
        parts = key[len(env_prefix) :].lower().split("__")
        node = cfg
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is not a section")
        node[parts[-1]] = _coerce(value)
    return cfg


def _merge(base: dict[str, Any], extra: dict[str, Any], where: str) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, where)
        else:
            base[key] = value
