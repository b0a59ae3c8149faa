"""`edgekit serve`: the OIP server on plain model files, no store, no MQTT, local-only."""

from __future__ import annotations

import logging
from pathlib import Path

from agent import fallback as fb
from agent.config import DEFAULTS, admin_token
from agent.engine import Engine
from agent.models import ModelRegistry, load_model
from agent.server import build_app
from edgekit.config import load_config
from edgekit.errors import ConfigError
from edgekit.modelcard import ModelCard

log = logging.getLogger(__name__)


def _card_for(path: Path) -> ModelCard | None:
    # A model card travels next to each artifact as <stem>.card.json, <stem>.json or model_card.json (what edgekit convert writes).
    for c in (path.with_suffix(".card.json"), path.with_suffix(".json"), path.parent / "model_card.json"):
        if c.is_file():
            try:
                return ModelCard.load(c)
            except (ValueError, TypeError, KeyError):
                log.warning("ignoring unreadable model card %s", c)
    return None


def build_engine(paths: list[Path], names: list[str] | None, version: str, threads: int | None) -> Engine:
    if names and len(names) != len(paths):
        raise ConfigError(f"{len(names)} --name for {len(paths)} model files")
    registry = ModelRegistry()
    for i, p in enumerate(paths):
        if not Path(p).is_file():
            raise ConfigError(f"model file not found: {p}")
        name = names[i] if names else Path(p).stem
        registry.put(load_model(name, p, version, card=_card_for(Path(p)), threads=threads))
    return Engine(registry, default_policy=fb.Policy(mode=fb.LOCAL_ONLY))


def _admin_token_from_env() -> str | None:
    # `edgekit serve` has no config file: the agent's [server] keys come from the environment
    # (EDGEKIT_SERVER__ADMIN_TOKEN or EDGEKIT_SERVER__ADMIN_TOKEN_FILE), one spelling for both.
    cfg = load_config(None, {"server": DEFAULTS["server"]})
    return admin_token(cfg["server"])


def serve_files(
    paths: list[Path],
    *,
    names: list[str] | None,
    host: str,
    port: int,
    version: str = "1",
    threads: int | None = None,
    max_body: int,
) -> None:
    import uvicorn

    engine = build_engine(paths, names, version, threads)
    app = build_app(engine, max_body=max_body, admin_token=_admin_token_from_env())
    print(f"edgekit serve: {', '.join(engine.registry.names())} on http://{host}:{port}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
