"""Logging set-up shared by every command: stdlib logging, rich handler on a terminal."""

from __future__ import annotations

import logging
import os


def setup_logging(verbose: bool = False) -> None:
    level_name = os.environ.get("EDGEKIT_LOG_LEVEL", "DEBUG" if verbose else "WARNING")
    level = getattr(logging, level_name.upper(), logging.WARNING)
    try:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        fmt = "%(name)s: %(message)s"
    except ImportError:  # pragma: no cover - rich is a base dependency
        handler = logging.StreamHandler()
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
