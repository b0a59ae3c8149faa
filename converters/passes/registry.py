"""The pass registry: every ONNX-to-ONNX legalization pass, by name.

A pass rewrites a model in place and says whether it changed anything; it never changes what the
model computes (its tests check that numerically against onnxruntime). `targets` are the targets
the pass is written for; which of them actually run it, and in which order, is DEFAULT_PASSES
(converters/passes/__init__.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

EDGE_TARGETS = frozenset({"tflite", "tfjs", "coreml"})

Apply = Callable[[onnx.ModelProto], bool]


@dataclass(frozen=True)
class Pass:
    name: str
    targets: frozenset[str]
    apply: Apply
    doc: str = ""


REGISTRY: dict[str, Pass] = {}


def register(
    name: str, targets: frozenset[str] | set[str] = EDGE_TARGETS, doc: str = ""
) -> Callable[[Apply], Apply]:
    """Decorator: register `fn(model) -> bool` as pass `name` (names are unique)."""

    def deco(fn: Apply) -> Apply:
        add(Pass(name, frozenset(targets), fn, doc or (fn.__doc__ or "").strip().splitlines()[0]))
        return fn

    return deco


def add(p: Pass) -> Pass:
    if p.name in REGISTRY:
        raise ValueError(f"pass {p.name!r} is registered twice")
    REGISTRY[p.name] = p
    return p
