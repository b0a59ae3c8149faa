"""Open Inference Protocol (KServe V2 REST) server: Starlette app + uvicorn runner.

Every error leaves as an OIP error body `{"error": "..."}` with a status code that says whose
fault it is (400 bad tensor, 404 unknown model, 413 too big, 503 cloud/local unavailable);
unexpected exceptions become a one-line 500, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agent import __version__ as agent_version
from agent.engine import Engine
from agent.oip import HEADER_LENGTH, OIPError, decode_request, encode_response

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 64 << 20


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise OIPError(413, f"request body of {int(declared)} bytes exceeds the {limit}-byte limit")
        except ValueError:
            raise OIPError(400, "invalid Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked bodies have no Content-Length: count as we read
            raise OIPError(413, f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(
    engine: Engine,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    is_ready: Callable[[], bool] | None = None,
    status: Callable[[], dict[str, Any]] | None = None,
    metrics: bool = True,
) -> Starlette:
    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        ok = is_ready() if is_ready else True
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_meta(request: Request) -> Response:
        return JSONResponse(
            {"name": "edgekit-agent", "version": agent_version, "extensions": ["binary_tensor_data"]}
        )

    async def model_meta(request: Request) -> Response:
        name = request.path_params["name"]
        model = engine.registry.get(name)
        if model is not None:
            return JSONResponse(model.metadata())
        if engine.cloud is not None and engine.policy(name).mode != "local-only":
            meta = await run_in_threadpool(_cloud_metadata, engine, name)
            if meta is not None:
                return JSONResponse(meta)
        return _error(404, f"unknown model {name!r}")

    async def model_ready(request: Request) -> Response:
        name = request.path_params["name"]
        if engine.registry.get(name) is None and (engine.cloud is None or name not in engine.policies):
            return _error(404, f"unknown model {name!r}")
        ok = engine.ready(name)
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    async def infer(request: Request) -> Response:
        name = request.path_params["name"]
        if not engine.knows(name):
            return _error(404, f"unknown model {name!r}")
        try:
            body = await _read_body(request, max_body)
            h = request.headers.get(HEADER_LENGTH)
            try:
                hlen = int(h) if h is not None else None
            except ValueError:
                raise OIPError(400, f"invalid {HEADER_LENGTH} header {h!r}") from None
            req = decode_request(body, hlen)
            result = await run_in_threadpool(engine.infer, name, req.inputs)
            out, out_hlen = encode_response(
                name, result.model_version, result.outputs, request=req, parameters=result.parameters()
            )
        except OIPError as e:
            return _error(e.status, e.message)
        except Exception as e:  # the contract: an OIP error body, never a traceback
            log.exception("inference on %s failed", name)
            return _error(500, f"internal error: {type(e).__name__}: {e}")
        if out_hlen is None:
            return Response(out, media_type="application/json")
        return Response(out, media_type="application/octet-stream", headers={HEADER_LENGTH: str(out_hlen)})

    async def unload(request: Request) -> Response:
        # Triton's model-repository extension: stop serving a model locally (requests then follow
        # the model's fallback policy). The store is untouched: a restart or an update loads it again.
        name = request.path_params["name"]
        if engine.registry.remove(name) is None:
            return _error(404, f"model {name!r} is not loaded")
        log.warning("model %s unloaded on request", name)
        return JSONResponse({})

    async def metrics_endpoint(request: Request) -> Response:
        return PlainTextResponse(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    async def agent_status(request: Request) -> Response:
        return JSONResponse(status() if status else {})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail))

    async def any_error(request: Request, exc: Exception) -> Response:
        return _error(500, f"internal error: {type(exc).__name__}")

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_meta),
        Route("/v2/models/{name}", model_meta),
        Route("/v2/models/{name}/versions/{version}", model_meta),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", unload, methods=["POST"]),
        Route("/agent/status", agent_status),
    ]
    if metrics:
        routes.append(Route("/metrics", metrics_endpoint))
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: any_error})


def _cloud_metadata(engine: Engine, name: str) -> dict[str, Any] | None:
    assert engine.cloud is not None
    try:
        r = engine.cloud._client.get(f"{engine.cloud.url}/v2/models/{name}")
    except Exception:
        return None
    return r.json() if r.status_code == 200 else None


class ServerThread:
    """Run an ASGI app under uvicorn in a background thread (tests, the daemon, the bench)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._run, name="edgekit-oip", daemon=True)
        self.host = host
        self.port = port

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > end or not self._thread.is_alive():
                raise RuntimeError("OIP server did not start")
            time.sleep(0.005)
        sock = self.server.servers[0].sockets[0]
        self.port = sock.getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
