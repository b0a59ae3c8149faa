"""HTTP: the artifact endpoint (devices, maybe behind a CDN) and the admin API (loopback, token).

Artifacts: GET /artifacts/{sha256} -> Starlette FileResponse, which under uvicorn answers
Range / If-Range / ETag, so an interrupted download resumes. Also GET /roots.json (the chain).

Admin API (what `edgekit fleet ...` calls): bearer token from <state_dir>/admin.token (0600),
bound to 127.0.0.1 by default. JSON in, JSON out; errors are {"error", "hint"} with 4xx.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from edgekit.errors import EdgekitError
from fleet.errors import NotFoundError

if TYPE_CHECKING:
    from fleet.server import FleetServer

log = logging.getLogger(__name__)


def artifact_app(server: FleetServer) -> Starlette:
    async def artifact(request: Request) -> Response:
        sha = request.path_params["sha256"]
        if not server.store.has(sha):
            return JSONResponse({"error": "no such artifact"}, status_code=404)
        # Content-addressed: the bytes behind a URL never change, so caches may keep them forever.
        return FileResponse(
            server.store.path(sha),
            media_type="application/octet-stream",
            headers={"Cache-Control": "public, max-age=31536000, immutable"},
        )

    async def roots(_request: Request) -> Response:
        return JSONResponse(server.keys.root_chain())

    return Starlette(routes=[Route("/artifacts/{sha256}", artifact), Route("/roots.json", roots)])


def admin_app(server: FleetServer) -> Starlette:
    def guard(fn: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            if request.headers.get("authorization") != f"Bearer {server.admin_token}":
                return JSONResponse({"error": "missing or wrong admin token"}, status_code=401)
            try:
                body = await request.json() if request.method == "POST" else {}
                return JSONResponse(fn(request, body))
            except NotFoundError as e:
                return JSONResponse({"error": str(e.args[0]), "hint": e.hint}, status_code=404)
            except EdgekitError as e:
                return JSONResponse({"error": str(e.args[0]), "hint": e.hint}, status_code=400)
            except (ValueError, KeyError, TypeError) as e:
                return JSONResponse({"error": f"bad request: {e}"}, status_code=400)

        return wrapped

    def health(_r: Request, _b: dict) -> dict:
        return {
            "ok": True,
            "fleet": server.fleet,
            "mqtt": server.broker_address(),
            "messages_in": server.messages_in,
            "manifests_sent": server.publisher.sent,
            "resyncs": server.resyncs,
            "desired_republished": server.publisher.republished,
        }

    def devices(_r: Request, _b: dict) -> Any:
        return server.devices.list()

    def models(_r: Request, _b: dict) -> Any:
        return server.registry.list()

    def rollouts(_r: Request, _b: dict) -> Any:
        return server.engine.list()

    def start(_r: Request, b: dict) -> Any:
        rid = server.engine.start(
            b["model"],
            b["version"],
            b.get("selector") or {},
            [float(w) for w in b.get("waves") or [100]],
            float(b.get("success_threshold", 0.95)),
            float(b.get("max_failure_rate", 0.05)),
            float(b.get("device_timeout", 900)),
            b.get("devices"),
        )
        server.kick()
        return server.engine.status(rid)

    def status(r: Request, _b: dict) -> Any:
        return server.engine.status(r.path_params["rid"])

    def action(r: Request, _b: dict) -> Any:
        rid, verb = r.path_params["rid"], r.path_params["verb"]
        fn = {
            "pause": server.engine.pause,
            "resume": server.engine.resume,
            "abort": server.engine.abort,
            "cancel": server.engine.cancel,
        }.get(verb)
        if fn is None:
            raise NotFoundError(f"unknown action {verb}")
        fn(rid)
        server.kick()
        return server.engine.status(rid)

    def reload_keys(_r: Request, _b: dict) -> Any:
        return {"root_version": server.reload_keys()}

    return Starlette(
        routes=[
            Route("/api/keys/reload", guard(reload_keys), methods=["POST"]),
            Route("/api/health", guard(health)),
            Route("/api/devices", guard(devices)),
            Route("/api/models", guard(models)),
            Route("/api/rollouts", guard(rollouts), methods=["GET"]),
            Route("/api/rollouts", guard(start), methods=["POST"]),
            Route("/api/rollouts/{rid}", guard(status)),
            Route("/api/rollouts/{rid}/{verb}", guard(action), methods=["POST"]),
        ]
    )


class UvicornThread:
    """A uvicorn server in a background thread (no signal handlers: the owner stops it)."""

    def __init__(self, app: Starlette, host: str, port: int, name: str):
        import uvicorn

        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, name=name, daemon=True)
        self.host, self.port = host, port

    def start(self, timeout: float = 10.0) -> None:
        import time

        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                from fleet.errors import FleetError

                raise FleetError(f"HTTP server could not start on {self.host}:{self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
