"""CLI commands of this package (registered on the root `edgekit` app)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
