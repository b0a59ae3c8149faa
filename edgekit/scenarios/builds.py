"""The releases the scenarios publish, each converted once by `edgekit convert` and cached.

A conversion is keyed by what determines it (the source model's bytes, the convert arguments,
edgekit's version), so a cache directory shared between runs (`--cache`, or the test suite's
module-scoped one) converts each model once however many scenarios publish it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from edgekit import __version__
from edgekit.launch import run_cli
from edgekit.scenarios import models
from edgekit.scenarios.harness import DemoError

SAMPLE = "sample:digits"
EVAL = models.SAMPLES_DIR / "digits_eval.npz"


def converted(source: str | Path, cache: Path) -> Path:
    """`edgekit convert SOURCE -t onnx -q none` (with the bundled eval set for top-1) in
    cache/<key>/, reused when already there."""
    args = ["-t", "onnx", "-q", "none", *([] if source == SAMPLE else ["--eval", str(EVAL)])]
    ident = source.encode() if source == SAMPLE else Path(source).read_bytes()
    key = hashlib.sha256(ident + json.dumps([args, __version__]).encode()).hexdigest()[:16]
    out = cache / f"convert-{key}"
    if (out / "report.json").exists():
        return out
    tmp = cache / f".convert-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    proc = run_cli("convert", str(source), *args, "--out", str(tmp), "--json")
    if proc.returncode != 0 or not json.loads(proc.stdout or "{}").get("ok"):
        raise DemoError(f"converting {source} failed:\n{proc.stderr[-2000:]}{proc.stdout[-1000:]}")
    tmp.rename(out)  # a half-written conversion is never taken for a cached one
    return out


def base(cache: Path) -> Path:
    """1.0.0 everywhere: the bundled digits CNN, fp32 ONNX."""
    return converted(SAMPLE, cache)


def slow(cache: Path) -> Path:
    """Same predictions as base, ~10 ms more compute per request (models.slow_variant): well above
    the p95 noise of a loaded box (4-5 ms measured for the base model), which 16 layers (~3 ms) were not."""
    return converted(models.slow_variant(models.SOURCE, cache / "sources" / "digits_slow.onnx"), cache)


def finetuned(cache: Path) -> Path:
    """Base with its last layer retrained on the bundled labelled digits (models.finetuned)."""
    x, y = models.training_split()
    return converted(
        models.finetuned(models.SOURCE, cache / "sources" / "digits_finetuned.onnx", x, y), cache
    )
