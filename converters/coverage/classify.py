"""One (case, target) outcome of `convert` -> matched / mismatch / refused / failed, with its reason.

- matched: the pipeline said ok and the artifact's outputs are allclose to ONNX's expected ones.
- mismatch: the artifact ran but its outputs differ (the pipeline said mismatch, or said ok while
  they are not allclose to ONNX's: "ok but wrong", which must never happen).
- refused: edgekit declined with a named reason before or during conversion (an unsupported op,
  shapes it needs, data it cannot use): a one-line answer the user can act on.
- failed: anything else (a backend crash, a timeout, a validation error, a traceback).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MATCHED, MISMATCH, REFUSED, FAILED = "matched", "mismatch", "refused", "failed"
STATUSES = (MATCHED, MISMATCH, REFUSED, FAILED)
RTOL, ATOL = 1e-3, 1e-4

# Row error kinds that are edgekit declining (refused) rather than breaking (failed).
REFUSAL_KINDS = {
    "unsupported_op",
    "needs_shapes",
    "invalid_model",
    "data",
    "unsupported_mode",
    "unsupported_dtype",
    "unsupported_type",
    "skipped",
    "bad_input",
    "toolchain_missing",
}


@dataclass
class Outcome:
    status: str  # one of STATUSES
    kind: str  # error kind (unsupported_op, timeout, ...) or "ok" / "mismatch"
    reason: str  # one short line for the table
    detail: str = ""  # the full message
    ok_but_wrong: bool = False  # the pipeline said ok, the outputs are not ONNX's
    max_abs_vs_expected: float | None = None
    seconds: float | None = None
    runtime: str | None = None  # e.g. "litert", "coreml (simulated)"
    legalized: list[str] | None = None
    versions: dict[str, str] | None = None  # converter / runtime versions the row reports

    def to_dict(self) -> dict[str, Any]:
        required = ("status", "kind", "reason")
        return {k: v for k, v in asdict(self).items() if k in required or v not in (None, "", [], {}, False)}


def compare(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> tuple[bool, float | None, str]:
    """(allclose, max abs error, why not) for one sample's outputs against ONNX's expected outputs.

    Outputs are matched by name, else by position (tools rename outputs). Shapes must agree
    exactly; NaN matches NaN where ONNX's reference produced one.
    """
    if set(expected) <= set(got):
        pairs = [(n, got[n]) for n in expected]
    elif len(got) == len(expected):
        pairs = list(zip(expected, got.values(), strict=True))
    else:
        return False, None, f"outputs {sorted(got)} do not match the expected {sorted(expected)}"
    worst = 0.0
    for name, y in pairs:
        want, y = np.asarray(expected[name]), np.asarray(y)
        if want.shape != y.shape:
            return False, None, f"output {name}: shape {list(y.shape)} vs expected {list(want.shape)}"
        a, b = want.astype(np.float64), y.astype(np.float64)
        if a.size:
            diff = np.abs(a - b)
            worst = max(worst, float(np.nanmax(diff)) if not np.all(np.isnan(diff)) else 0.0)
        if not np.allclose(b, a, rtol=RTOL, atol=ATOL, equal_nan=True):
            return False, worst, f"output {name}: not allclose (max abs {worst:.3g})"
    return True, worst, ""


def first_sample(outputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The pipeline stacks outputs on a leading sample axis; the case has one sample."""
    return {k: np.asarray(v)[0] for k, v in outputs.items()}


def from_row(row: Any, expected: dict[str, np.ndarray]) -> Outcome:
    """Classify a report row (ArtifactReport) of a convert() that returned."""
    runtime = (row.runtime or "") + (" (simulated)" if "simulated" in (row.runtime_note or "") else "")
    extra = {
        "runtime": runtime or None,
        "legalized": list(getattr(row, "legalized", None) or []) or None,
        "versions": dict(row.versions) or None,
    }
    kind = getattr(row, "error_kind", None)
    if row.status in ("ok", "mismatch"):
        outputs = getattr(row, "outputs", None)
        if outputs is None:
            return Outcome(FAILED, "no_outputs", "the report row carries no outputs to check", **extra)
        same, err, why = compare(first_sample(outputs), expected)
        if row.status == "ok":
            if same:
                return Outcome(MATCHED, "ok", "", max_abs_vs_expected=err, **extra)
            return Outcome(
                MISMATCH,
                "ok_but_wrong",
                f"reported ok but {why}",
                why,
                True,
                max_abs_vs_expected=err,
                **extra,
            )
        detail = row.error or ""
        note = " (the artifact is allclose to ONNX's expected outputs)" if same else ""
        return Outcome(MISMATCH, "mismatch", _short(detail) + note, detail, max_abs_vs_expected=err, **extra)
    detail = row.error or f"status {row.status}"
    kind = kind or ("skipped" if row.status == "skipped" else _kind_from_message(detail))
    status = REFUSED if kind in REFUSAL_KINDS else FAILED
    return Outcome(status, kind, reason_line(kind, detail), detail, **extra)


def from_exception(exc: BaseException) -> Outcome:
    """Classify convert() raising: an exit-2 EdgekitError is a refusal; anything else a failure."""
    from edgekit.errors import EdgekitError

    detail = str(exc)
    if isinstance(exc, EdgekitError):
        kind = _kind_of_exception(exc)
        status = REFUSED if exc.exit_code == 2 else FAILED
        return Outcome(status, kind, reason_line(kind, detail), detail)
    kind = "traceback"
    return Outcome(FAILED, kind, f"traceback escaped convert: {type(exc).__name__}: {_short(detail)}", detail)


def from_runner_failure(kind: str, detail: str) -> Outcome:
    """The child running the case crashed or ran past the case's time limit."""
    return Outcome(FAILED, kind, reason_line(kind, detail), detail)


# edgekit error classes (or their bases) -> the kind the matrix reports; by name, so a class
# added later (a subclass) maps through its base.
_KIND_BY_CLASS = {
    "NeedsShapesError": "needs_shapes",
    "UnsupportedOperatorError": "unsupported_op",
    "WorkerTimeoutError": "timeout",
    "ToolchainMissingError": "toolchain_missing",
    "InvalidModelError": "invalid_model",
    "DataError": "data",
}


def _kind_of_exception(exc: BaseException) -> str:
    for cls in type(exc).__mro__:
        if cls.__name__ in _KIND_BY_CLASS:
            return _KIND_BY_CLASS[cls.__name__]
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", type(exc).__name__).lower()
    return _kind_from_message(str(exc), default=snake)


def _kind_from_message(message: str, default: str = "backend_crash") -> str:
    """For errors that carry no kind: the two a message states unambiguously, else `default`."""
    low = message.lower()
    if "unsupported operator" in low:
        return "unsupported_op"
    if "timed out" in low:
        return "timeout"
    return default


_OP = re.compile(r"unsupported operator (\S+)")


def reason_line(kind: str, message: str) -> str:
    """A short, human line: the op for unsupported ops, else the kind and the message's first line."""
    if kind == "unsupported_op":
        m = _OP.search(message)
        return f"unsupported op {m.group(1)}" if m else f"unsupported op: {_short(message)}"
    return f"{kind}: {_short(message)}"


def _short(message: str, limit: int = 160) -> str:
    line = next((ln.strip() for ln in message.strip().splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


_VOLATILE = [
    (re.compile(r"'[^']*'|\"[^\"]*\""), "'…'"),  # node names, paths, values
    (re.compile(r"/[\w./-]+"), "PATH"),
    (re.compile(r"\b0x[0-9a-f]+\b|\b\d+(\.\d+)?(e[-+]?\d+)?\b", re.IGNORECASE), "N"),
    (re.compile(r"\[[^\]]*\]"), "[…]"),
]


_UNSUPPORTED_HOW = re.compile(r"unsupported operator \S+ \(node .*?\): ([^:;(]+)")
_NO_KERNEL = re.compile(r"NOT_IMPLEMENTED : Could not find an implementation for \S+")


def reason_group(outcome: Outcome) -> str:
    """Outcomes that fail the same way share a group (op and node names, numbers and paths masked)."""
    if outcome.status == MATCHED:
        return ""
    if outcome.kind == "unsupported_op":
        how = _UNSUPPORTED_HOW.search(outcome.detail or "")
        return f"unsupported op: {how.group(1).strip()}" if how else "unsupported op"
    text = _short(outcome.detail or outcome.reason, 400)
    text = re.sub(r"^(onnx|tflite|tfjs|coreml): ", "", text)
    text = _NO_KERNEL.sub("onnxruntime has no kernel for the op", text)
    for pattern, repl in _VOLATILE:
        text = pattern.sub(repl, text)
    return f"{outcome.kind}: {text[:110]}"
