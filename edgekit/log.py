"""Logging set-up shared by every command: stdlib logging, always on stderr.

stdout carries only a command's output (tables, JSON), so `... --json | jq` never sees a log line.
Formats (`--log-format` or EDGEKIT_LOG_FORMAT):
  text  rich on a terminal; plain, unwrapped lines otherwise (journald, files, pipes)
  json  one JSON object per line: {"ts", "level", "logger", "msg"[, "exc"]}
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

FORMATS = ("text", "json")
FORMAT_ENV = "EDGEKIT_LOG_FORMAT"
LEVEL_ENV = "EDGEKIT_LOG_LEVEL"
PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def log_format(requested: str | None = None) -> str:
    """The format to use: the flag, else EDGEKIT_LOG_FORMAT, else text; ValueError if unknown."""
    fmt = (requested or os.environ.get(FORMAT_ENV) or "text").lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def make_handler(fmt: str, stream=None) -> logging.Handler:
    stream = stream or sys.stderr
    if fmt == "json":
        handler: logging.Handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        return handler
    if stream.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(file=stream), show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        return handler
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(PLAIN))
    return handler


def setup_logging(verbose: bool = False, fmt: str | None = None) -> None:
    level_name = os.environ.get(LEVEL_ENV, "DEBUG" if verbose else "WARNING")
    level = getattr(logging, level_name.upper(), logging.WARNING)
    root = logging.getLogger()
    root.handlers[:] = [make_handler(log_format(fmt))]
    root.setLevel(level)


def stdout_console() -> Console:
    """The rich Console for a command's own output (tables). Piped or redirected, it is as wide
    as the content needs: a table must not be cut at 80 columns because nobody is looking."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(width=100_000, soft_wrap=True)
