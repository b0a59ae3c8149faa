"""`edgekit serve`: the OIP server on plain model files, no store, no MQTT, local-only."""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path

from agent import fallback as fb
from agent.batcher import BatchingConfig
from agent.config import DEFAULTS, admin_token
from agent.engine import Engine
from agent.models import ModelRegistry, RuntimeTuning, load_model, set_runtime_tuning
from agent.server import build_app, settle_heap, uvicorn_config
from agent.versions import ALL
from edgekit.config import load_config
from edgekit.errors import ConfigError
from edgekit.modelcard import ModelCard

log = logging.getLogger(__name__)

SERVER_NAME = "edgekit-serve"  # what server metadata says; the daemon's server is "edgekit-agent"


def _card_for(path: Path) -> ModelCard | None:
    # A model card travels next to each artifact as <stem>.card.json, <stem>.json or model_card.json (what edgekit convert writes).
    for c in (path.with_suffix(".card.json"), path.with_suffix(".json"), path.parent / "model_card.json"):
        if c.is_file():
            try:
                return ModelCard.load(c)
            except (ValueError, TypeError, KeyError):
                log.warning("ignoring unreadable model card %s", c)
    return None


def build_engine(
    paths: list[Path],
    names: list[str] | None,
    version: str | list[str],
    threads: int | None,
    batching: BatchingConfig | None = None,
) -> Engine:
    """An engine serving `paths`. Files given the same name are versions of one model, all loaded
    side by side; the last one listed is the active version (what an unversioned request gets).
    With `batching`, every model with a batch axis is dynamically batched."""
    if names and len(names) != len(paths):
        raise ConfigError(f"{len(names)} --name for {len(paths)} model files")
    versions = [version] if isinstance(version, str) else list(version)
    if len(versions) == 1:
        versions = versions * len(paths)
    if len(versions) != len(paths):
        raise ConfigError(
            f"{len(versions)} --model-version for {len(paths)} model files (give one, or one per file)"
        )
    registry = ModelRegistry()
    seen: set[tuple[str, str]] = set()
    for i, p in enumerate(paths):
        if not Path(p).is_file():
            raise ConfigError(f"model file not found: {p}")
        name = names[i] if names else Path(p).stem
        if (name, versions[i]) in seen:
            raise ConfigError(
                f"model {name!r} version {versions[i]!r} is given twice: give each file its own --model-version"
            )
        seen.add((name, versions[i]))
        registry.set_policy(name, ALL)  # every file given on the command line is served
        registry.put(load_model(name, p, versions[i], card=_card_for(Path(p)), threads=threads))
    configs = {n: batching for n in registry.names()} if batching else None
    return Engine(registry, default_policy=fb.Policy(mode=fb.LOCAL_ONLY), batching=configs)


def _admin_token_from_env() -> str | None:
    # `edgekit serve` has no config file: the agent's [server] keys come from the environment
    # (EDGEKIT_SERVER__ADMIN_TOKEN or EDGEKIT_SERVER__ADMIN_TOKEN_FILE), one spelling for both.
    cfg = load_config(None, {"server": DEFAULTS["server"]})
    return admin_token(cfg["server"])


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or ConfigError (one line, exit 2) when the port is taken or the
    address is not ours: bound before any model loads, so a clash costs nothing."""
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # socket.create_server's proto 0 left every response waiting ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
        sock.bind((host, port))
        sock.listen(2048)
        return sock
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use (pick another with --port)") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def serve_files(
    paths: list[Path],
    *,
    names: list[str] | None,
    host: str,
    port: int,
    version: str | list[str] = "1",
    threads: int | None = None,
    max_body: int,
    batching: BatchingConfig | None = None,
    tuning: RuntimeTuning | None = None,
) -> None:
    import uvicorn

    sock = bind(host, port)
    try:
        if tuning is not None:
            set_runtime_tuning(tuning)
        engine = build_engine(paths, names, version, threads, batching)
        app = build_app(
            engine, max_body=max_body, admin_token=_admin_token_from_env(), server_name=SERVER_NAME
        )
        print(f"{SERVER_NAME}: {', '.join(engine.registry.names())} on http://{host}:{port}", flush=True)
        settle_heap()
        uvicorn.Server(uvicorn_config(app)).run(sockets=[sock])
    finally:
        sock.close()
