"""Typed TOML configuration with environment overrides, on pydantic-settings.

Precedence (lowest to highest): the model's defaults < the TOML file < environment variables
`EDGEKIT_<SECTION>__<KEY>` (e.g. `EDGEKIT_MQTT__HOST=broker.local`) < explicit CLI flags.

Every value is typed by its field: `EDGEKIT_MQTT__PASSWORD=123456` stays the string "123456",
`EDGEKIT_MQTT__PORT=1883` becomes an int, `EDGEKIT_MQTT__PORT=x` is an error. Lists and tables
come from the environment as JSON (`EDGEKIT_AGENT__LABELS='{"site": "berlin"}'`). Unknown keys,
in the file or in a known section of the environment, are errors naming the key path.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edgekit.errors import ConfigError, EdgekitError

ENV_PREFIX = "EDGEKIT_"
# Values of these keys never appear in an error message.
_SECRET_WORDS = ("password", "token", "key")


class Section(BaseModel):
    """One [section] of a config file: unknown keys are errors, numbers may stand for strings
    (`device = 1001` is the device "1001"), nothing else is coerced across types."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, validate_default=True)


class FileSettings(BaseSettings):
    """A whole config file. Subclasses declare one `Section` field per [section]."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init arguments; the environment wins over them. No .env
        # file and no secrets directory: a service's configuration is its file plus its unit's env.
        return (env_settings, init_settings)


class ConfigProblems(ConfigError):
    """A config that does not validate. `problems` has one line per problem (`check` prints
    them one per line); the message joins them into the single line the CLI prints."""

    def __init__(self, where: str, problems: list[str]):
        self.where, self.problems = where, problems
        super().__init__(f"{where}: " + "; ".join(problems))


S = TypeVar("S", bound=FileSettings)


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {p}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML in {p}: {e}") from None


def load_settings(model: type[S], path: str | Path | None, what: str) -> S:
    """`model` from the TOML file at `path` (None: defaults) and the environment, or
    ConfigProblems naming every bad or unknown key."""
    data = read_toml(path) if path is not None else {}
    where = str(path) if path is not None else what
    # pydantic-settings reads init arguments named `_...` as its own options: never from a file.
    private = [k for k in data if k.startswith("_")]
    if private:
        raise ConfigProblems(where, [f"{k}: unknown key" for k in private])
    try:
        return model(**data)
    except ValidationError as e:
        raise ConfigProblems(where, problems(e, model)) from None


def problems(e: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per validation error: `mqtt.hots: unknown key (did you mean host?)`."""
    out = []
    for err in e.errors(include_url=False):
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in loc) or "(top)"
        if err["type"] == "extra_forbidden":
            line = f"{path}: unknown key"
            close = difflib.get_close_matches(str(loc[-1]), _known_keys(model, loc[:-1]), n=1)
            if close:
                line += f" (did you mean {close[0]}?)"
        else:
            line = f"{path}: {err['msg']}"
            secret = any(w in str(p).lower() for p in loc for w in _SECRET_WORDS)
            if "input" in err and not secret and not isinstance(err["input"], dict):
                line += f" (got {err['input']!r:.60})"
        env = ENV_PREFIX + "__".join(str(p) for p in loc).upper()
        if loc and env in {k.upper() for k in os.environ}:
            line += f" [from {env}]"
        out.append(line)
    return out


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys a model accepts at `loc` (for a did-you-mean): follows nested models and
    tables of models ([models.NAME]); anything else has no suggestions."""
    current: Any = model
    parts = list(loc)
    while parts:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(parts.pop(0)))
        if field is None:
            return []
        current = field.annotation
        if typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
            if not parts:
                return []
            parts.pop(0)  # the table's own key, e.g. "digits" in models.digits
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def collect_problems(check: Callable[[], list[str]]) -> list[str]:
    """Run a config check: the problems it returns, or the ones its ConfigError names."""
    try:
        return check()
    except ConfigProblems as e:
        return [f"{e.where}: {p}" for p in e.problems]
    except EdgekitError as e:
        return [str(e).splitlines()[0]]


def print_check(problems: list[str], as_json: bool) -> int:
    """`... check` output on stdout: "ok", or one line per problem. Returns the exit code (2 = bad)."""
    if as_json:
        print(json.dumps({"ok": not problems, "problems": problems}, indent=2))
    else:
        print("\n".join(problems) if problems else "ok")
    return 2 if problems else 0
