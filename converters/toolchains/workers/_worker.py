"""Request/response plumbing shared by the worker scripts (runs inside a toolchain interpreter).

Stdlib only: this file is imported by scripts running in the isolated environments, where
edgekit itself is not installed. A worker is `python script.py REQ.json RESP.json`; it writes
{"ok": true, ...result} or {"ok": false, "error": {"kind", "message", ...}} and exits 0 either way,
so the caller can tell an expected failure (unsupported op) from a crash (no response file).

`python script.py --serve` is the same worker kept alive for many requests (the caller pays the
TensorFlow / torch import once): each stdin line is {"request": REQ.json, "response": RESP.json};
when RESP.json is written the worker answers with one line {"done": RESP.json} on its original
stdout. Everything else the process prints (Python or C++) goes to stderr, so tool chatter can
never corrupt that channel. EOF on stdin, or the caller dying, ends the worker.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any


class WorkerError(Exception):
    """An expected failure, reported to the caller as structured data."""

    def __init__(self, kind: str, message: str, **extra: Any):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, **self.extra}


class _Tee(io.TextIOBase):
    """Copies writes to the real stream and a buffer, so tool output is both shown and parsed."""

    def __init__(self, real: Any, buf: io.StringIO):
        self.real, self.buf = real, buf

    def write(self, s: str) -> int:
        self.buf.write(s)
        with contextlib.suppress(Exception):
            self.real.write(s)
        return len(s)

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            self.real.flush()


@contextlib.contextmanager
def captured() -> Iterator[io.StringIO]:
    """Capture Python-level stdout/stderr (tools like onnx2tf print their errors, then sys.exit)."""
    buf = io.StringIO()
    old_out, old_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(old_out, buf), _Tee(old_err, buf)
    try:
        yield buf
    finally:
        sys.stdout, sys.stderr = old_out, old_err


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def versions(*packages: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


SERVE_FLAG = "--serve"


def main(handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    if len(sys.argv) > 1 and sys.argv[1] == SERVE_FLAG:
        serve(handler)
    else:
        handle_file(handler, sys.argv[1], sys.argv[2])


def serve(handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Answer requests from stdin until EOF (see the module docstring for the protocol)."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # fd 1 (print, TensorFlow's C++ logging) now goes to stderr
    _exit_with_parent()
    home = os.getcwd()
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        msg = json.loads(line)
        try:
            handle_file(handler, msg["request"], msg["response"])
        finally:
            os.chdir(home)  # handlers chdir for tools that write to the working directory
            sys.stdout.flush()
            sys.stderr.flush()
        channel.write(json.dumps({"done": msg["response"]}) + "\n")


def _exit_with_parent(poll_seconds: float = 1.0) -> None:
    """A served worker must not outlive its caller (e.g. one killed on a timeout) with its memory."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def handle_file(handler: Callable[[dict[str, Any]], dict[str, Any]], req_path: str, resp_path: str) -> None:
    with open(req_path) as f:
        request = json.load(f)
    try:
        response: dict[str, Any] = {"ok": True, **handler(request)}
    except WorkerError as e:
        response = {"ok": False, "error": e.to_dict()}
    except SystemExit as e:  # a tool called sys.exit() instead of raising
        response = {"ok": False, "error": {"kind": "backend_crash", "message": f"tool exited with {e.code}"}}
    except Exception as e:
        response = {
            "ok": False,
            "error": {
                "kind": "backend_crash",
                "message": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=8),
            },
        }
    tmp = resp_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(response, f)
    os.replace(tmp, resp_path)
