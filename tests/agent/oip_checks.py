"""Shared by the OIP hardening suites: a strict JSON parser, a log capture that also sees uvicorn's
own (non-propagating) loggers, a model whose outputs are NaN/±Inf, and `edgekit serve` as a real
process with its environment and log output under the test's control."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.agent.conftest import EDGEKIT, REPO, ServeProcess, free_port, wait_http

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


def _no_constants(name: str) -> Any:
    raise ValueError(f"not strict JSON: bare {name}")


def strict_json(body: str | bytes) -> Any:
    """json.loads that refuses NaN/Infinity tokens, as JSON.parse, Go and jq do."""
    return json.loads(body, parse_constant=_no_constants)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self) -> list[str]:
        """Every record that carries a traceback (exc_info, or a formatted one in its text)."""
        out = []
        for r in self.records:
            text = self.format(r)
            if r.exc_info or "Traceback (most recent call last)" in text:
                out.append(text)
        return out


@contextmanager
def captured_logs() -> Iterator[_Records]:
    """Every log record at DEBUG and up, from the root and from uvicorn (which does not propagate)."""
    handler = _Records()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn"), logging.getLogger("uvicorn.error")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


def nonfinite_model(path: Path) -> Path:
    """x float32 [N, 4] -> log float32 [N, 4] = Log(x), inv float32 [N, 4] = 1/x.

    x = [0, -1, 1, 2] gives log = [-inf, nan, 0, 0.69] and inv = [inf, -1, 1, 0.5]."""
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["log"]), helper.make_node("Reciprocal", ["x"], ["inv"])],
        "nonfinite",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("log", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("inv", TensorProto.FLOAT, ["N", 4]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def infer_doc(x: np.ndarray, name: str = "input") -> dict[str, Any]:
    return {
        "inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }


def start_serve_logged(
    files: list[Path], names: list[str], log_file: Path, env: dict[str, str] | None = None
) -> ServeProcess:
    """`edgekit serve` as a real process, its stdout and stderr (the log, rich writes it to stdout) in
    one file: a pipe could fill and block it."""
    port = free_port()
    cmd = [*EDGEKIT, "serve", *map(str, files), "--port", str(port)]
    for n in names:
        cmd += ["--name", n]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_SERVER__")}
    full_env.update(PYTHONPATH=str(REPO), **(env or {}))
    with open(log_file, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=err, stderr=subprocess.STDOUT)
    sp = ServeProcess(proc, port)
    try:
        wait_http(f"{sp.url}/v2/health/ready", proc=proc)
    except Exception:
        sp.stop()
        raise
    return sp
