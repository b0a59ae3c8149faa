"""Errors the fleet CLI shows users (one line + hint, see edgekit.errors)."""

from __future__ import annotations

from edgekit.errors import EdgekitError


class FleetError(EdgekitError):
    """A fleet operation cannot be done as asked."""


class NotFoundError(FleetError):
    exit_code = 3


class ServerUnreachableError(FleetError):
    def __init__(self, url: str):
        super().__init__(
            f"the fleet server's admin API does not answer at {url}",
            hint="start it with: edgekit fleet serve [--config fleet.toml]",
        )
