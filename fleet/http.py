"""HTTP: the artifact endpoint (devices, maybe behind a CDN) and the admin API (loopback, token).

Artifacts: GET /artifacts/{sha256} -> Starlette FileResponse, which under uvicorn answers
Range / If-Range / ETag, so an interrupted download resumes. Also GET /roots.json (the chain).

Admin API (what `edgekit fleet ...` calls): a bearer token whose sha256 is in the database
(`fleet serve` writes one to <state_dir>/admin.token, 0600; `edgekit fleet tokens create` makes
more), bound to 127.0.0.1 by default. JSON in, JSON out; errors are {"error", "hint", "reason"} with 4xx,
and an unexpected error is a JSON 500 too (never a plain-text page, never a traceback).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from edgekit import boundedjson
from edgekit.errors import EdgekitError
from edgekit.protocol import describe
from fleet import admin_tokens
from fleet import metrics as fleet_metrics
from fleet.admin_schema import MAX_BODY_BYTES, MAX_BODY_DEPTH, RolloutRequest
from fleet.errors import NotFoundError
from fleet.timestamps import with_iso

if TYPE_CHECKING:
    from fleet.server import FleetServer

log = logging.getLogger(__name__)


def artifact_app(server: FleetServer) -> Starlette:
    async def artifact(request: Request) -> Response:
        sha = request.path_params["sha256"]
        if not await run_in_threadpool(server.store.has, sha):
            return JSONResponse({"error": "no such artifact"}, status_code=404)
        # S3: a fresh presigned URL (the manifest's URL outlives any); the agent follows it with
        # its Range header. 307 keeps the method; never cached, since the URL expires.
        url = await run_in_threadpool(server.store.url_for, sha)
        if url:
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
        # Content-addressed: the bytes behind a URL never change, so caches may keep them forever.
        return FileResponse(
            server.store.path(sha),
            media_type="application/octet-stream",
            headers={"Cache-Control": "public, max-age=31536000, immutable"},
        )

    def roots(_request: Request) -> Response:  # reads key files: Starlette runs it in a thread
        return JSONResponse(server.keys.root_chain())

    return Starlette(routes=[Route("/artifacts/{sha256}", artifact), Route("/roots.json", roots)])


def admin_app(server: FleetServer) -> Starlette:
    def guard(fn: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            # Token digests live in the database (fleet.admin_tokens): any replica accepts them.
            auth = request.headers.get("authorization")
            if not await run_in_threadpool(admin_tokens.authorized, server.db, auth):
                return JSONResponse({"error": "missing or wrong admin token"}, status_code=401)
            try:
                body = await _body(request) if request.method == "POST" else {}
                # Handlers read and write the database and sign manifests: in a worker thread,
                # never on the event loop (other requests and artifact downloads go on meanwhile).
                return JSONResponse(with_iso(await run_in_threadpool(fn, request, body)))
            except NotFoundError as e:
                return _error(404, "not_found", str(e.args[0]), e.hint)
            except EdgekitError as e:
                return _error(400, "refused", str(e.args[0]), e.hint)
            except boundedjson.JsonLimitError as e:
                return _error(400, e.reason, f"bad request body: {e.detail}")
            except ValidationError as e:
                return _error(400, "invalid_request", f"bad request: {describe(e)}")
            except Exception as e:  # a bug: still JSON, and the traceback only at DEBUG
                log.error("admin %s %s failed: %s: %s", request.method, request.url.path, type(e).__name__, e)
                log.debug("admin API error", exc_info=True)
                return _error(500, "internal", "internal error in the fleet server (see its log)")

        return wrapped

    async def _body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        doc = boundedjson.loads(raw, MAX_BODY_BYTES, MAX_BODY_DEPTH) if raw else {}
        if not isinstance(doc, dict):
            raise boundedjson.JsonLimitError("not_object", "expected a JSON object")
        return doc

    registry = fleet_metrics.registry_for(server)

    def metrics(request: Request) -> Response:  # DB reads: Starlette runs a plain def in a thread
        body, content_type = fleet_metrics.render(registry, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    def health(_r: Request, _b: dict) -> dict:
        return {
            "ok": True,
            "fleet": server.fleet,
            "replica": server.replica_id,
            "leader": server.leads(),
            "mqtt": server.broker_address(),
            "messages_in": server.messages_in,
            "manifests_sent": server.publisher.sent,
            "resyncs": server.resyncs,
            "desired_republished": server.publisher.republished,
            "outbox_pending": server.outbox.pending() if server.outbox else 0,
            "outbox_published": server.outbox.published if server.outbox else 0,
            "ingest": server.outcomes.snapshot(),
        }

    def devices(_r: Request, _b: dict) -> Any:
        return server.devices.list()

    def models(_r: Request, _b: dict) -> Any:
        return server.registry.list()

    def drift(r: Request, _b: dict) -> Any:  # `edgekit fleet drift`
        q = r.query_params
        return server.devices.drift(r.path_params["model"], q.get("version") or None, q.get("by") or "site")

    def rollouts(_r: Request, _b: dict) -> Any:
        return server.engine.list()

    def start(_r: Request, b: dict) -> Any:
        req = RolloutRequest.model_validate(b)
        rid = server.engine.start(
            req.model,
            req.version,
            req.selector or {},
            req.waves or [100.0],
            req.success_threshold,
            req.max_failure_rate,
            req.device_timeout,
            req.devices,
            req.gates,
            req.bake,
            req.on_breach,
            shadow=req.shadow,
            promote=req.promote,
            min_shadow_requests=req.min_shadow_requests,
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
            Route("/metrics", metrics),  # open, as scrapers expect: counts only, no ids
            Route("/api/devices", guard(devices)),
            Route("/api/models", guard(models)),
            Route("/api/drift/{model}", guard(drift)),
            Route("/api/rollouts", guard(rollouts), methods=["GET"]),
            Route("/api/rollouts", guard(start), methods=["POST"]),
            Route("/api/rollouts/{rid}", guard(status)),
            Route("/api/rollouts/{rid}/{verb}", guard(action), methods=["POST"]),
        ],
        # Unknown routes and methods answer in the API's JSON shape too, not Starlette's plain text.
        exception_handlers={HTTPException: _http_error},
    )


async def _http_error(_request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return _error(status, "not_found" if status == 404 else "http_error", str(detail))


def _error(status: int, reason: str, message: str, hint: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "hint": hint, "reason": reason}, status_code=status)


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
