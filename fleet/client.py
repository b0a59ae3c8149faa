"""The CLI's side of the admin API: loopback HTTP with the token the server wrote at start."""

from __future__ import annotations

from typing import Any

import httpx

from fleet import config as fleet_config
from fleet.errors import FleetError, NotFoundError, ServerUnreachableError


class AdminClient:
    def __init__(self, cfg: dict[str, Any], timeout: float = 30.0):
        a = cfg["admin"]
        host = "127.0.0.1" if a["host"] in ("0.0.0.0", "") else a["host"]
        self.url = f"http://{host}:{a['port']}"
        token_file = fleet_config.state_dir(cfg) / "admin.token"
        try:
            token = token_file.read_text().strip()
        except FileNotFoundError:
            raise ServerUnreachableError(self.url) from None
        self.http = httpx.Client(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            r = self.http.request(method, path, json=body)
        except httpx.TransportError:
            raise ServerUnreachableError(self.url) from None
        data = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code == 404:
            raise NotFoundError(data.get("error", "not found"), hint=data.get("hint"))
        if r.status_code >= 400:
            raise FleetError(data.get("error", f"admin API error {r.status_code}"), hint=data.get("hint"))
        return data

    def get(self, path: str) -> Any:
        return self._call("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call("POST", path, body or {})
