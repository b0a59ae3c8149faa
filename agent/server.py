"""Open Inference Protocol (KServe V2 REST) server: Starlette app + uvicorn runner.

Every error leaves as an OIP error body `{"error": "..."}` with a status code that says whose
fault it is (400 bad tensor, 401/403 admin token, 404 unknown model, 413 too big, 503
cloud/local unavailable). Bad input is always a 4xx; an unexpected exception is a one-line 500
and one log line, never a traceback (that goes to DEBUG). A client that hangs up mid-upload is
counted (`edgekit_agent_aborted_requests_total`) and logged at DEBUG only: it is not our error.

Inference, health, metadata, config, statistics and /metrics are open (the KServe norm); the
repository routes (index, load, unload) need the admin bearer token: see agent/admin_auth.py.
A version in the URL is served by exactly that loaded version, else 404 (agent/versions.py).
Bodies may be gzip/deflate both ways (agent/compression.py).

Where an inference request runs (measured on a 2-core EPYC: a thread-pool hop costs 0.3-0.5 ms
of wake-ups end to end, more than a small model's whole run):
- on the event loop, when the model's last run took under `INLINE_COMPUTE_S` and the body is
  under `INLINE_BODY` bytes: decoding, the run and encoding cost less than the hop would;
- in the thread pool otherwise, so a slow model never stalls the loop;
- for a dynamically batched model (agent/batcher.py), in the thread pool under its own larger
  limit (its threads mostly wait for their batch), watched for the client going away: a request
  whose client disconnected is dropped from the batch queue before it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent import __version__ as agent_version
from agent import classification, compression
from agent.admin_auth import AdminAuthError, check_admin
from agent.engine import LOCAL, Engine, InferResult
from agent.oip import (
    HEADER_LENGTH,
    InferRequest,
    OIPError,
    decode_request,
    encode_response,
    parse_header_length,
)
from agent.stats import Timing
from agent.triton_config import model_config

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 64 << 20
MAX_ADMIN_BODY = 64 << 10  # repository requests carry a few parameters, never a model
INLINE_COMPUTE_S = 0.0005
INLINE_BODY = 64 << 10
# Batched requests wait in threads for their batch: enough for several full batches to queue
# while one runs (the default pool of 40 would cap a batch of 32 at 8 followers).
BATCH_WAITERS = 256
# What this server implements of the KServe V2 / Triton extensions (server metadata lists them).
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository", "statistics"]
_ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE"]
_HEADER_LENGTH_KEY = HEADER_LENGTH.lower().encode()

Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _header_table(request: Request) -> dict[bytes, bytes]:
    """The request's headers by (lower-case, per ASGI) name, the first of duplicates winning as in
    Starlette's `headers.get`: one pass, where each `headers.get` is a scan that decodes every
    header (four of them were a tenth of the handler's time on a tiny model)."""
    return dict(reversed(request.scope["headers"]))


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


async def _read_body(request: Request, limit: int, declared: str | None) -> bytes:
    """The whole body, or OIPError(413/400); ClientDisconnect when the client hangs up mid-body.
    `declared`: the request's Content-Length header."""
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise OIPError(400, "invalid Content-Length")
        if len(declared) > 19 or int(declared) > limit:
            raise OIPError(413, f"request body of {declared[:20]} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked bodies have no Content-Length: count as we read
            raise OIPError(413, f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _infer_body(
    engine: Engine,
    name: str,
    version: str | None,
    raw: bytes,
    content_encoding: str | None,
    header_length: int | None,
    timing: Timing,
    limit: int,
) -> tuple[bytes, int | None]:
    """Inflate, decode, infer, encode: one thread-pool hop, so the event loop never parses (or
    inflates) a large body."""
    req = _decode(engine, name, version, raw, content_encoding, header_length, timing, limit)
    return _encode(engine, name, req, engine.infer(name, req.inputs, version, timing))


def _decode(
    engine: Engine,
    name: str,
    version: str | None,
    raw: bytes,
    content_encoding: str | None,
    header_length: int | None,
    timing: Timing,
    limit: int,
) -> InferRequest:
    t0 = time.perf_counter()
    try:
        body = compression.decode_body(raw, content_encoding, limit)
        req = decode_request(body, header_length)
        if req.classification:
            _check_classification(engine, name, version, req.classification)
    except OIPError as e:
        engine.request_failed(name, version, e.status, timing)  # the engine counts the rest
        raise
    timing.input_ns = int((time.perf_counter() - t0) * 1e9)
    return req


def _encode(engine: Engine, name: str, req: InferRequest, result: InferResult) -> tuple[bytes, int | None]:
    t1 = time.perf_counter()
    outputs = result.outputs
    if req.classification:
        local = engine.registry.get(name, result.model_version) if result.served_by == LOCAL else None
        labels = local.card.labels if local is not None and local.card is not None else None
        outputs = dict(outputs)
        for out_name, k in req.classification.items():
            if out_name in outputs:  # an unknown one is refused by encode_response, naming it
                outputs[out_name] = classification.classify(out_name, outputs[out_name], k, labels)
    encoded = encode_response(
        name, result.model_version, outputs, request=req, parameters=result.parameters()
    )
    if result.served_by == LOCAL and result.model_version is not None:
        engine.stats.output(name, result.model_version, int((time.perf_counter() - t1) * 1e9))
        if engine.shadow is not None:  # a coin flip and a non-blocking put (agent/shadow.py)
            engine.shadow.offer(name, result.model_version, req.inputs, result.outputs)
    return encoded


def _check_classification(engine: Engine, name: str, version: str | None, wanted: dict[str, int]) -> None:
    """Refuse classification on a local output it cannot apply to before running anything."""
    model = engine.registry.get(name, version)
    if model is None:
        return  # the cloud answers: its outputs are checked when they arrive
    specs = {s.name: s for s in model.outputs}
    for out_name in wanted:
        spec = specs.get(out_name)
        if spec is None:
            raise OIPError(400, f"unknown outputs requested: [{out_name!r}]; model has {list(specs)}")
        classification.check_applies(out_name, spec.dtype, len(spec.shape))


def _compressed(body: bytes, accept_encoding: str | None) -> tuple[bytes, dict[str, str]]:
    if len(body) < compression.MIN_COMPRESS:  # first: a small answer need not parse the header
        return body, {"Vary": "Accept-Encoding"}
    coding = compression.choose_encoding(accept_encoding)
    if coding is None:
        return body, {"Vary": "Accept-Encoding"}
    return compression.encode_body(body, coding), {"Content-Encoding": coding, "Vary": "Accept-Encoding"}


def _encode_for(
    engine: Engine,
    name: str,
    version: str | None,
    raw: bytes,
    headers: dict[str, str | None],
    timing: Timing,
    limit: int,
) -> Response:
    hlen = parse_header_length(headers["header_length"])
    out, out_hlen = _infer_body(engine, name, version, raw, headers["content_encoding"], hlen, timing, limit)
    return _response(out, out_hlen, headers)


def _response(out: bytes, out_hlen: int | None, headers: dict[str, str | None]) -> Response:
    out, extra = _compressed(out, headers["accept_encoding"])
    if out_hlen is None:
        return Response(out, media_type="application/json", headers=extra)
    return Response(
        out, media_type="application/octet-stream", headers={HEADER_LENGTH: str(out_hlen), **extra}
    )


def _quick(engine: Engine, model: Any) -> bool:
    """Cheaper to run on the event loop than to hop to a thread: a fast model (last run, or its
    warm-up, under INLINE_COMPUTE_S) that can never call the cloud (a blocking network call)."""
    seconds = model.last_compute_s
    return seconds is not None and seconds < INLINE_COMPUTE_S and engine.never_remote(model.name)


async def _batched(
    request: Request, timing: Timing, args: tuple[Any, ...], limiter: anyio.CapacityLimiter
) -> Response:
    """A batched request. For a model that never calls the cloud and a body cheap to decode
    (binary tensors, or small), no thread at all: decode here, queue, await the batch on the
    loop, encode here (a thread hop each way cost more than the rest). Otherwise the whole
    request in a thread. Either way a client that disconnects meanwhile cancels it."""
    engine, name, version, raw, headers, _, limit = args
    cheap = headers["header_length"] is not None or len(raw) < INLINE_BODY
    if cheap and not headers["content_encoding"] and engine.never_remote(name):
        hlen = parse_header_length(headers["header_length"])
        req = _decode(engine, name, version, raw, None, hlen, timing, limit)
        t0 = time.perf_counter()
        queued = engine.submit_local(name, req.inputs, version, timing)
        if queued is not None:
            model, future = queued
            await _unless_disconnected(request, timing, asyncio.wrap_future(future))
            result = engine.local_done(model, future, t0)
            return _response(*_encode(engine, name, req, result), headers)
        work: Awaitable[Any] = anyio.to_thread.run_sync(
            engine.infer, name, req.inputs, version, timing, limiter=limiter
        )
        result = await _unless_disconnected(request, timing, work)
        return _response(*_encode(engine, name, req, result), headers)
    work = anyio.to_thread.run_sync(_encode_for, *args, limiter=limiter)
    return await _unless_disconnected(request, timing, work)


async def _unless_disconnected(request: Request, timing: Timing, work: Awaitable[Any]) -> Any:
    """Await `work`; if the client disconnects first, cancel the request (dropped from its batch
    queue if its batch has not started) and await what `work` then returns or raises."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnect(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    if not task.done():
        timing.cancel()
    with contextlib.suppress(asyncio.CancelledError):  # a wrapped future cancelled by timing.cancel()
        return await task
    return None


async def _disconnect(receive: Receive) -> None:
    """Return when the client goes away (the body has been read: only a disconnect can come)."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


def _internal(what: str, e: BaseException) -> JSONResponse:
    log.error("%s failed: %s: %s", what, type(e).__name__, e)
    log.debug("%s failed", what, exc_info=e)
    return _error(500, f"internal error: {type(e).__name__}: {e}")


def build_app(
    engine: Engine,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    is_ready: Callable[[], bool] | None = None,
    status: Callable[[], dict[str, Any]] | None = None,
    metrics: bool = True,
    admin_token: str | None = None,
    server_name: str = "edgekit-agent",
) -> ASGIApp:
    """The agent's OIP app. `admin_token` guards the repository routes; None disables them."""

    def version_of(request: Request) -> str | None:
        return request.path_params.get("version")

    def local(request: Request) -> Any:
        """The local model a versioned or unversioned route names (None), or OIPError(404) for a
        version that is not loaded."""
        return engine.local_model(request.path_params["name"], version_of(request))

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        ok = is_ready() if is_ready else True
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_meta(request: Request) -> Response:
        return JSONResponse({"name": server_name, "version": agent_version, "extensions": EXTENSIONS})

    async def model_meta(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            model = local(request)
        except OIPError as e:
            return _error(e.status, e.message)
        if model is not None:
            meta = model.metadata(engine.registry.versions(name))
            if model.extra.get("provenance"):  # the signed conversion report (edgekit.provenance)
                meta["provenance"] = model.extra["provenance"]
            return JSONResponse(meta)
        if engine.cloud is not None and engine.policy(name).mode != "local-only":
            meta = await run_in_threadpool(_cloud_metadata, engine, name)
            if meta is not None:
                return JSONResponse(meta)
        return _error(404, f"unknown model {name!r}")

    async def model_config_route(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            model = local(request)
        except OIPError as e:
            return _error(e.status, e.message)
        if model is None:
            return _error(404, f"model {name!r} is not loaded here: no local configuration to show")
        batcher = engine.batcher(model)
        cfg = model_config(
            name,
            getattr(model.runtime, "name", "unknown"),
            model.inputs,
            model.outputs,
            engine.registry.policy(name),
            batcher.cfg if batcher is not None else None,
        )
        return JSONResponse(cfg)

    async def model_ready(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            model = local(request)
        except OIPError as e:
            return _error(e.status, e.message)
        if model is None and (engine.cloud is None or name not in engine.policies):
            return _error(404, f"unknown model {name!r}")
        ok = engine.ready(name)
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    waiters: list[anyio.CapacityLimiter] = []  # made on the server's loop, at the first batched request

    async def infer(request: Request) -> Response:
        name = request.path_params["name"]
        if not engine.knows(name):
            return _error(404, f"unknown model {name!r}")
        table = _header_table(request)
        headers = {
            "header_length": _text(table.get(_HEADER_LENGTH_KEY)),
            "content_encoding": _text(table.get(b"content-encoding")),
            "accept_encoding": _text(table.get(b"accept-encoding")),
        }
        try:
            raw = await _read_body(request, max_body, _text(table.get(b"content-length")))
            timing = Timing()  # the body is in: from here on the time is ours
            version = version_of(request)
            args = (engine, name, version, raw, headers, timing, max_body)
            model = engine.registry.get(name, version)
            if model is not None and engine.batcher(model) is not None:
                if not waiters:
                    waiters.append(anyio.CapacityLimiter(BATCH_WAITERS))
                return await _batched(request, timing, args, waiters[0])
            if model is not None and len(raw) < INLINE_BODY and _quick(engine, model):
                return _encode_for(*args)
            return await run_in_threadpool(_encode_for, *args)
        except ClientDisconnect:
            # Nobody is left to answer; a flood of these must not flood the log either.
            engine.metrics.aborted_requests.inc()
            log.debug("client closed the connection before sending the body of a %s request", name)
            return Response(status_code=400)
        except OIPError as e:
            return _error(e.status, e.message)
        except Exception as e:  # the contract: an OIP error body, never a traceback
            return _internal(f"inference on {name}", e)

    def stats_keys(name: str | None, version: str | None) -> list[tuple[str, str]]:
        names = [name] if name is not None else engine.registry.names()
        keys = []
        for n in names:
            for v in engine.registry.versions(n):
                if version is None or v == version:
                    keys.append((n, v))
        return keys

    async def stats_all(request: Request) -> Response:
        return JSONResponse(engine.stats.snapshot(stats_keys(None, None)))

    async def stats_model(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            model = local(request)
        except OIPError as e:
            return _error(e.status, e.message)
        if model is None:
            return _error(404, f"model {name!r} is not loaded here: no statistics")
        return JSONResponse(engine.stats.snapshot(stats_keys(name, version_of(request))))

    def admin(handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            try:
                check_admin(request.headers.get("authorization"), admin_token)
                return await handler(request)
            except AdminAuthError as e:
                log.warning("refused %s %s: %s", request.method, request.url.path, e.message)
                return _error(e.status, e.message, e.headers())
            except OIPError as e:
                return _error(e.status, e.message)
            except ClientDisconnect:
                return Response(status_code=400)

        return guarded

    async def repository_index(request: Request) -> Response:
        doc = await _admin_doc(request)
        loaded = [
            {"name": m.name, "version": m.version, "state": "READY"}
            for m in sorted(engine.registry.all(), key=lambda m: m.name)
        ]
        if doc.get("ready") is True:  # Triton: only the models ready for inference
            return JSONResponse(loaded)
        unloaded = [
            {"name": n, "state": "UNAVAILABLE", "reason": "unloaded"} for n in engine.registry.unloaded()
        ]
        return JSONResponse(loaded + unloaded)

    async def load(request: Request) -> Response:
        # Triton's repository extension: serve an unloaded model again (every version it had),
        # from the same files; a model that is loaded stays as it is.
        name = request.path_params["name"]
        params = (await _admin_doc(request)).get("parameters") or {}
        if params:
            return _error(
                400,
                f"load parameters {sorted(params)} are not supported: a model loads from its own "
                "file, and updates are how a new one arrives",
            )
        try:
            model = await run_in_threadpool(engine.registry.reload, name)
        except Exception as e:  # the file went away or no longer opens: say so, keep serving the rest
            log.warning("model %s could not be loaded again: %s: %s", name, type(e).__name__, e)
            return _error(409, f"model {name!r} cannot be loaded again: {type(e).__name__}: {e}")
        if model is None:
            return _error(404, f"model {name!r} is not in the repository (neither loaded nor unloaded)")
        log.warning(
            "model %s loaded on request (versions %s)", name, ", ".join(engine.registry.versions(name))
        )
        return JSONResponse({})

    async def unload(request: Request) -> Response:
        # Stop serving a model locally, every version (requests then follow its fallback policy).
        # The store is untouched: `load`, a restart or an update brings it back.
        name = request.path_params["name"]
        await _admin_doc(request)  # unload_dependents: nothing here depends on another model
        if engine.registry.unload(name) is None:
            return _error(404, f"model {name!r} is not loaded")
        log.warning("model %s unloaded on request", name)
        return JSONResponse({})

    async def repository_unknown(request: Request) -> Response:
        return _error(404, f"no repository route {request.method} {request.url.path}")

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = engine.metrics.render(request.headers.get("accept"))
        body, extra = _compressed(body, request.headers.get("accept-encoding"))
        return Response(body, headers={"Content-Type": content_type, **extra})

    async def agent_status(request: Request) -> Response:
        return JSONResponse(status() if status else {})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail))

    async def any_error(request: Request, exc: Exception) -> Response:
        return _error(500, f"internal error: {type(exc).__name__}")

    routes = [
        # Inference first: Starlette tries routes in order, and this is the hot path.
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_meta),
        # Before /v2/models/{name}: "stats" is this route, as in Triton.
        Route("/v2/models/stats", stats_all),
        Route("/v2/models/{name}", model_meta),
        Route("/v2/models/{name}/versions/{version}", model_meta),
        Route("/v2/models/{name}/config", model_config_route),
        Route("/v2/models/{name}/versions/{version}/config", model_config_route),
        Route("/v2/models/{name}/stats", stats_model),
        Route("/v2/models/{name}/versions/{version}/stats", stats_model),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready),
        Route("/v2/repository/index", admin(repository_index), methods=["POST"]),
        Route("/v2/repository/models/{name}/load", admin(load), methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", admin(unload), methods=["POST"]),
        # Any other repository path is refused before it is even looked up.
        Route("/v2/repository/{rest:path}", admin(repository_unknown), methods=_ANY_METHOD),
        Route("/agent/status", agent_status),
    ]
    if metrics:
        routes.append(Route("/metrics", metrics_endpoint))
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: any_error})
    return _OneLineErrors(app)


async def _admin_doc(request: Request) -> dict[str, Any]:
    """A repository request's JSON body ({} when empty), or OIPError(400/413/415)."""
    raw = await _read_body(request, MAX_ADMIN_BODY, request.headers.get("content-length"))
    body = compression.decode_body(raw, request.headers.get("content-encoding"), MAX_ADMIN_BODY)
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise OIPError(400, "repository request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise OIPError(400, "repository request body must be a JSON object")
    if not isinstance(doc.get("parameters", {}), dict):
        raise OIPError(400, "repository request 'parameters' must be a JSON object")
    return doc


class _OneLineErrors:
    """Starlette answers an unhandled exception with our 500 body, then re-raises it so the server
    can log it, and uvicorn logs a traceback. Stop it here: one line, the traceback at DEBUG."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as e:
            log.error("%s %s failed: %s: %s", scope.get("method"), scope.get("path"), type(e).__name__, e)
            log.debug("unhandled exception", exc_info=e)


def _cloud_metadata(engine: Engine, name: str) -> dict[str, Any] | None:
    assert engine.cloud is not None
    try:
        r = engine.cloud._client.get(f"{engine.cloud.url}/v2/models/{name}")
        return r.json() if r.status_code == 200 else None
    except Exception:  # unreachable, or a 200 that is not JSON: the model is unknown to us
        return None


class _CoalescedWrites:
    """A transport that sends what one event-loop step wrote as one `send`.

    uvicorn writes a response's status line and headers, then its body, as two writes: with
    TCP_NODELAY that is two segments, and the client wakes up twice per response. On a busy
    2-core box each wake-up costs a scheduling delay; profiling the tiny-model request path put
    those two `send`s first. Writes are joined and sent at the end of the loop step (call_soon),
    before any I/O wait; close() sends what is pending first."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


def http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, with one send per response (_CoalescedWrites)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_CoalescedWrites(transport, self.loop))  # type: ignore[arg-type]

    return CoalescingHttpToolsProtocol


def event_loop() -> str:
    """The OIP server's event loop, spelled out: uvicorn's default ("auto") would switch to uvloop
    whenever it happens to be installed. uvloop did not win clearly on the agent's request path
    (bench/agent.py --ab default,uvloop: tiny-model HTTP p50 overhead within the box's noise),
    so it is no dependency; ServerThread and `edgekit serve` honour the same choice."""
    import importlib.util

    return "uvloop" if EVENT_LOOP == "uvloop" and importlib.util.find_spec("uvloop") else "asyncio"


EVENT_LOOP = "asyncio"  # "uvloop" where installed: the bench's A/B sets it


def uvicorn_config(app: Any, **kw: Any) -> Any:
    """The uvicorn.Config every OIP server runs with (`edgekit serve`, the daemon, tests)."""
    import uvicorn

    return uvicorn.Config(
        app,
        loop=event_loop(),
        log_level="warning",
        access_log=False,
        lifespan="off",
        http=http_protocol(),
        ws="none",  # no websocket routes: "auto" imported the websockets package at start (25+ ms)
        **kw,
    )


def settle_heap() -> None:
    """When serving starts: move every object start-up made (imports: pydantic, numpy,
    onnxruntime; the loaded models) to the permanent generation. A full collection otherwise
    walks all of them, 0.1-0.3 s measured on a loaded 2-core box, on whichever thread's
    allocation triggers it: a request's, or an update's loading its new model (the hot-swap
    p99). Afterwards the collector walks only what came later. No gc.collect() first: it costs
    that same pause before ready, and start-up leaves next to no cyclic garbage. Frozen objects
    are still freed by reference counting, so a replaced model is freed as before."""
    gc.freeze()


class ServerThread:
    """Run an ASGI app under uvicorn in a background thread (tests, the daemon, the bench)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        config = uvicorn_config(app, host=host, port=port, timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._run, name="edgekit-oip", daemon=True)
        self.host = host
        self.port = port

    def _run(self) -> None:
        # the config's loop, made here: uvicorn applies it only in Server.run, which owns the thread
        factory = None
        if self.server.config.loop == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(self.server.serve())

    def start(self, timeout: float = 10.0) -> ServerThread:
        settle_heap()
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
