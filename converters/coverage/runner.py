"""Running (case, target) pairs through `convert`, none able to block or kill the whole matrix.

`run_case` is one pair, in this process: `convert(model, targets=[t], modes=["none"],
eval_data=...)`, classified against the case's expected outputs. The worker calls inside share
a time limit (manager.time_limit), so a hanging conversion becomes a timeout row.

`CaseRunner` runs pairs in a long-lived child interpreter (`_serve.py`, the worker protocol of
toolchains/workers/_worker.py) that keeps persistent toolchain workers between cases. What the
time limit cannot stop -- a hang or a segfault in a runtime that runs in-process (LiteRT, ONNX
Runtime) -- kills only the child: the pair is reported failed and the next one gets a new child.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from converters.coverage import cases, classify
from converters.coverage.classify import Outcome
from converters.toolchains import manager
from edgekit.errors import BackendError

SERVE_SCRIPT = Path(__file__).with_name("_serve.py")
GRACE = 30.0  # seconds the child gets beyond the case's limit to report a timeout itself
# Worker scripts whose handler cannot run twice in one process; they stay one process per call.
NOT_REENTRANT: tuple[str, ...] = ()


def run_case(case_dir: Path, target: str, out: Path, timeout: float | None = None) -> Outcome:
    """One case through edgekit's pipeline for one target at fp32, classified."""
    from converters.pipeline import convert

    t0 = time.perf_counter()
    try:
        expected = cases.load_expected(case_dir)
        with manager.time_limit(timeout):
            report = convert(
                case_dir / cases.MODEL_FILE,
                targets=[target],
                modes=["none"],
                eval_data=cases.eval_data(case_dir),
                out=out,
                freeze_inputs=cases.frozen(case_dir),
            )
        rows = [r for r in report.artifacts if r.target == target]
        outcome = (
            classify.from_row(rows[0], expected)
            if rows
            else Outcome(classify.FAILED, "no_row", "the report has no row for the target")
        )
    except Exception as e:  # refusals (EdgekitError) and escaped tracebacks alike
        outcome = classify.from_exception(e)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    outcome.seconds = round(time.perf_counter() - t0, 2)
    return outcome


# ------------------------------------------------------------------------ the child's side

_pool_stack: contextlib.ExitStack | None = None


def _keep_workers(max_requests: int | None, one_shot: list[str]) -> None:
    """Enter persistent_workers() once for the child's lifetime (closed at interpreter exit)."""
    global _pool_stack
    if _pool_stack is None:
        _pool_stack = contextlib.ExitStack()
        _pool_stack.enter_context(manager.persistent_workers(max_requests, one_shot))
        atexit.register(_pool_stack.close)


def without_passes(names: list[str]) -> None:
    """Measurement knob (this process only): legalize without these passes ("all": every one).

    Measures what passes gain: the same matrix with and without them. The pipeline reads each
    target's passes from the target table through converters.legalize.
    """
    import converters.legalize as legalize

    drop = set(names)
    legalize.TARGETS = MappingProxyType(
        {
            t: replace(row, passes=tuple(p for p in row.passes if "all" not in drop and p not in drop))
            for t, row in legalize.TARGETS.items()
        }
    )


def handle(request: dict[str, Any]) -> dict[str, Any]:
    """The child's request handler: {"case_dir", "target", "out", "timeout", "persistent", ...}."""
    if request.get("persistent", True):
        _keep_workers(request.get("max_requests"), request.get("one_shot", []))
    if request.get("without_passes"):
        without_passes(request["without_passes"])
    outcome = run_case(Path(request["case_dir"]), request["target"], Path(request["out"]), request["timeout"])
    return {"outcome": outcome.to_dict()}


# ------------------------------------------------------------------------ the parent's side


class CaseRunner:
    """Sends (case, target) pairs to a child interpreter; a dead or stuck child is replaced."""

    def __init__(
        self,
        timeout: float,
        persistent: bool = True,
        max_requests: int | None = 100,
        without_passes: list[str] | None = None,
    ):
        self.timeout = timeout
        self.persistent = persistent
        self.max_requests = max_requests
        self.without_passes = list(without_passes or [])
        self.child = manager.PersistentWorker(sys.executable, SERVE_SCRIPT)

    def run(self, case_dir: Path, target: str, out: Path) -> Outcome:
        request = {
            "case_dir": str(case_dir),
            "target": target,
            "out": str(out),
            "timeout": self.timeout,
            "persistent": self.persistent,
            "max_requests": self.max_requests,
            "one_shot": list(NOT_REENTRANT),
            "without_passes": self.without_passes,
        }
        t0 = time.perf_counter()
        try:
            reply = self.child.call(request, timeout=self.timeout + GRACE)
        except manager.WorkerTimeoutError:
            outcome = classify.from_runner_failure(
                "timeout", f"the case ran past {self.timeout:.0f}s (+{GRACE:.0f}s grace) and was killed"
            )
        except BackendError as e:
            outcome = classify.from_runner_failure("crash", _crash_line(str(e)))
        else:
            data = reply.data
            if data.get("ok"):
                return Outcome(**data["outcome"])
            err = data.get("error", {})
            outcome = classify.from_runner_failure("runner_error", err.get("message", str(err)))
        outcome.seconds = round(time.perf_counter() - t0, 2)
        shutil.rmtree(out, ignore_errors=True)
        return outcome

    def close(self) -> None:
        self.child.shutdown()


def _crash_line(message: str) -> str:
    """The telling line of a dead child's output (a fatal signal, an abort), else the first line."""
    lines = message.splitlines()
    for ln in reversed(lines):
        if any(s in ln for s in ("Fatal Python error", "Segmentation fault", "Aborted", "terminate called")):
            return f"{lines[0]} ({ln.strip()})"
    return lines[0] if lines else message
