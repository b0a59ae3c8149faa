"""Where edgekit keeps its files, and untyped dict configs with environment overrides.

agent.toml and fleet.toml are typed models (edgekit.settings); `load_config` remains for the
small dict configs built from a section's defaults (`edgekit serve`). Precedence (lowest to
highest): defaults < TOML file < `EDGEKIT_<SECTION>__<KEY>` environment variables < CLI flags.
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


def _coerce(key: str, text: str, default: Any) -> Any:
    """An env value typed by the default it replaces: a string stays a string (a password of
    digits is not a number), numbers and booleans are parsed, lists and tables are JSON."""
    if isinstance(default, str) or default is None:
        return text
    try:
        if isinstance(default, bool):
            low = text.strip().lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError("expected true or false")
            return low in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        value = json.loads(text)
        if not isinstance(value, type(default)):
            raise ValueError(f"expected a JSON {type(default).__name__}")
        return value
    except ValueError as e:
        raise ConfigError(f"{key}={text[:60]!r}: {e}") from None


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
        node[parts[-1]] = _coerce(key, value, node.get(parts[-1]))
    return cfg


def _merge(base: dict[str, Any], extra: dict[str, Any], where: str) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, where)
        else:
            base[key] = value
