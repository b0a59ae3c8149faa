"""Test helpers: a real HTTP artifact server (Range-capable, optionally throttled), keys, manifests."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from agent.models import ModelRegistry
from agent.server import ServerThread
from agent.state import StateStore
from agent.store import ModelStore
from agent.updater import Updater
from edgekit.trust import (
    SigningKey,
    build_manifest,
    build_root,
    build_smoke_test,
    dumps,
    load_trusted_root,
    sign,
    sign_root,
)


@dataclass
class ArtifactServer:
    """Serves files from `root` with Range support. `delay` seconds per 64 KiB chunk throttles it."""

    root: Path
    delay: float = 0.0
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    thread: ServerThread | None = None

    def start(self) -> ArtifactServer:
        async def get(request: Request) -> Response:
            path = self.root / request.path_params["path"]
            rng = request.headers.get("range")
            self.requests.append((request.path_params["path"], rng))
            if not path.is_file():
                return Response("not found", status_code=404)
            data = path.read_bytes()
            start, status, headers = 0, 200, {"Accept-Ranges": "bytes"}
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0])
                if start >= len(data):
                    return Response(status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            headers["Content-Length"] = str(len(data) - start)
            delay = self.delay

            async def body():
                for i in range(start, len(data), 65536):
                    if delay:
                        await asyncio.sleep(delay)
                    yield data[i : i + 65536]

            return StreamingResponse(body(), status_code=status, headers=headers)

        app = Starlette(routes=[Route("/files/{path:path}", get)])
        self.thread = ServerThread(app).start()
        return self

    @property
    def url(self) -> str:
        assert self.thread
        return self.thread.url + "/files/"

    def stop(self) -> None:
        if self.thread:
            self.thread.stop()


@dataclass
class Keys:
    root: SigningKey
    release: SigningKey
    root_env: dict[str, Any]

    @classmethod
    def make(cls) -> Keys:
        root, release = SigningKey.generate(), SigningKey.generate()
        env = sign_root(build_root([root], [release.public_hex]), [root])
        return cls(root, release, env)

    def root_bytes(self) -> bytes:
        return dumps(self.root_env)


def card(name: str = "cls") -> dict[str, Any]:
    return {
        "name": name,
        "inputs": [{"name": "input", "dtype": "float32", "shape": ["N", 4], "layout": None}],
        "outputs": [{"name": "probs", "dtype": "float32", "shape": ["N", 3], "layout": None}],
        "task": "classification",
    }


def expected_probs(x: np.ndarray, bias: float = 0.0) -> np.ndarray:
    logits = x[:, :3].astype(np.float64) + np.array([bias, 0.0, 0.0])
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def manifest(
    keys: Keys,
    *,
    file: Path,
    url: str,
    sequence: int,
    version: str,
    model: str = "cls",
    fleet: str = "f",
    device: str = "dev-1",
    smoke_bias: float | None = 0.0,
    size: int | None = None,
    sha256: str | None = None,
    expires_in: timedelta = timedelta(hours=1),
    now: datetime | None = None,
    signer: SigningKey | None = None,
    extra_artifacts: dict[str, dict] | None = None,
) -> bytes:
    data = file.read_bytes()
    x = np.array([[2.0, 1.0, 0.0, 0.0]], np.float32)
    smoke = (
        build_smoke_test({"input": x}, {"probs": expected_probs(x, smoke_bias)})
        if smoke_bias is not None
        else None
    )
    signed = build_manifest(
        fleet=fleet,
        device=device,
        model=model,
        version=version,
        sequence=sequence,
        artifacts={
            "onnx": {
                "url": url,
                "sha256": sha256 or hashlib.sha256(data).hexdigest(),
                "size": len(data) if size is None else size,
                "file": file.name,
                "precision": "fp32",
            },
            **(extra_artifacts or {}),
        },
        model_card=card(model),
        smoke_test=smoke,
        expires_in=expires_in,
        now=now,
    )
    return dumps(sign(signed, [signer or keys.release]))


# The input every update test runs through the tiny classifier `cls` (expected_probs gives its answer).
X = np.array([[2.0, 1.0, 0.0, 0.0]], np.float32)


def make_updater(
    tmp_path: Path, keys: Keys, reports: list[dict[str, Any]] | None = None, **download_opts: Any
) -> Updater:
    """A real Updater for device dev-1 of fleet f, its store and state under tmp_path/agent."""
    data = tmp_path / "agent"
    return Updater(
        store=ModelStore(data / "store"),
        states=StateStore(data / "state"),
        registry=ModelRegistry(),
        root=load_trusted_root(keys.root_bytes()),
        fleet="f",
        device="dev-1",
        trust_file=data / "trust.json",
        report=(reports.append if reports is not None else None),
        download_opts={"retries": 1, "timeout": 10, **download_opts},
    )
