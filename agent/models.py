"""Loaded models and the name -> model table the server reads.

Hot swap is a reference swap: a request looks its model up once and keeps that object until it
answers, so an update replacing the entry never pulls a runtime out from under a running
request; the old runtime is freed when its last request drops the reference.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from agent import versions
from agent.batcher import has_batch_axis
from agent.oip import OIPError, datatype_of
from agent.versions import VersionPolicy
from edgekit.modelcard import ModelCard, TensorSpec

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    name: str
    version: str
    runtime: Any  # targets.runtimes.base.Runtime
    path: Path | None = None
    sha256: str | None = None
    card: ModelCard | None = None
    loaded_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None  # kept so `load` can reopen the same file the same way
    # the last local run's seconds (the warm-up's at first): the server runs a fast model's
    # requests on its event loop instead of paying a thread hop (agent/server.py), and the
    # batcher stops waiting for company when only this much is left before a deadline
    last_compute_s: float | None = None

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.runtime.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.runtime.outputs

    @cached_property
    def has_batch_axis(self) -> bool:
        """Requests can be batched on axis 0 (agent/batcher.py): read from the card when there is
        one (the user's shapes), else from the runtime's."""
        if self.card is not None and self.card.inputs and self.card.outputs:
            return has_batch_axis(self.card.inputs, self.card.outputs)
        return has_batch_axis(self.inputs, self.outputs)

    @property
    def is_classifier(self) -> bool:
        return self.card is None or self.card.task == "classification"

    def validate(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check names, dtypes and shapes against the model; raise OIPError(400) naming the problem."""
        expected = {s.name: s for s in self.inputs}
        unknown = [n for n in feeds if n not in expected]
        if unknown:
            raise OIPError(400, f"unknown input(s) {unknown}; model {self.name!r} takes {list(expected)}")
        missing = [n for n in expected if n not in feeds]
        if missing:
            raise OIPError(400, f"missing input(s) {missing} for model {self.name!r}")
        for name, spec in expected.items():
            arr = feeds[name]
            if arr.dtype != np.dtype(spec.dtype):
                got, want = datatype_of(arr.dtype), datatype_of(spec.dtype)
                raise OIPError(400, f"input {name!r}: datatype {got}, model expects {want}")
            if not spec.accepts(tuple(arr.shape)):
                raise OIPError(400, f"input {name!r}: shape {list(arr.shape)}, model expects {spec.shape}")
        return feeds

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runtime.run(feeds)

    def metadata(self, versions: list[str] | None = None) -> dict[str, Any]:
        def t(s: TensorSpec) -> dict[str, Any]:
            return {
                "name": s.name,
                "datatype": datatype_of(s.dtype),
                "shape": [d if isinstance(d, int) and d > 0 else -1 for d in s.shape],
            }

        return {
            "name": self.name,
            "versions": versions or [self.version],
            "platform": getattr(self.runtime, "name", "unknown"),
            "inputs": [t(s) for s in self.inputs],
            "outputs": [t(s) for s in self.outputs],
        }


@dataclass(frozen=True)
class RuntimeTuning:
    """How models are opened on this box ([agent] keys): onnxruntime's thread pools and memory
    arena, and a warm-up run before a model is served."""

    intra_op_threads: int | None = None  # None: one per core (onnxruntime), 1 (LiteRT)
    inter_op_threads: int | None = None
    memory_arena: bool = True
    warmup: bool = True

    @classmethod
    def from_config(cls, agent: dict[str, Any]) -> RuntimeTuning:
        """From the [agent] section (0 threads = the runtime's default)."""
        return cls(
            int(agent.get("threads") or 0) or None,
            int(agent.get("inter_op_threads") or 0) or None,
            bool(agent.get("memory_arena", True)),
            bool(agent.get("warmup", True)),
        )


# One agent per process, and every path that opens a model (the daemon, the updater, `load`)
# must open it the same way: the tuning is the process's, set once at start.
_tuning = RuntimeTuning()


def set_runtime_tuning(tuning: RuntimeTuning) -> None:
    global _tuning
    _tuning = tuning


def runtime_tuning() -> RuntimeTuning:
    return _tuning


def load_model(
    name: str,
    path: str | Path,
    version: str = "1",
    *,
    card: ModelCard | None = None,
    sha256: str | None = None,
    threads: int | None = None,
    tuning: RuntimeTuning | None = None,
) -> LoadedModel:
    """Open a model file; with warm-up (the default) run it once on zeros before returning, so
    the first request does not pay for onnxruntime's lazy allocations and the server knows
    how long a run takes."""
    import time

    from targets.runtimes.base import open_runtime

    t = tuning or _tuning
    threads = threads or t.intra_op_threads
    runtime = open_runtime(
        path,
        threads=threads,
        output_names=[o.name for o in card.outputs] if card else None,
        inter_op_threads=t.inter_op_threads,
        memory_arena=t.memory_arena,
    )
    model = LoadedModel(name, str(version), runtime, Path(path), sha256, card, time.time(), threads=threads)
    if t.warmup:
        warm_up(model)
    return model


def warm_up(model: LoadedModel) -> None:
    """One run on zeros of the card's shapes (dynamic dims 1). A model that refuses them (a
    dynamic dim that must be larger) is served all the same: warm-up is an optimization."""
    import time

    specs = model.card.inputs if model.card is not None and model.card.inputs else model.inputs
    try:
        feeds = {s.name: np.zeros(s.fixed_shape(1), dtype=np.dtype(s.dtype)) for s in specs}
        t0 = time.perf_counter()
        model.run(feeds)
    except Exception as e:
        log.debug("warm-up of %s %s on zeros failed (served all the same): %s", model.name, model.version, e)
        return
    model.last_compute_s = time.perf_counter() - t0


# How long a model an update replaced is kept referenced after the swap (see _retire).
RETIRE_S = 2.0


def _retire(models: list[LoadedModel]) -> None:
    """Drop the last references to swapped-out models on a timer thread, RETIRE_S later.

    A runtime is freed by whichever thread drops its last reference. Right after a swap that is
    often a request thread still running on the old version: freeing an onnxruntime session
    (its arena, joining its thread pool) took ~5 ms there, on that request's latency. By
    RETIRE_S the requests that looked the old model up have answered, so the timer thread frees
    it instead (a request still holding it after that frees it as before)."""
    if models:
        timer = threading.Timer(RETIRE_S, models.clear)
        timer.daemon = True
        timer.name = "edgekit-retire"
        timer.start()


class ModelRegistry:
    """name -> loaded versions of that model, in activation order (the last one is the active one).

    An unversioned request gets the active version (the one an update or rollback activated last);
    a versioned request gets exactly that version or nothing. The model's version policy
    (agent/versions.py) decides which older versions stay loaded beside the active one.
    """

    def __init__(self, version_policies: dict[str, VersionPolicy] | None = None) -> None:
        # Readers do one or two dict lookups on an immutable snapshot; writers build a new table.
        self._models: dict[str, dict[str, LoadedModel]] = {}
        # What the repository `unload` route took offline, so `load` can reopen it. Only the
        # recipes (path, version, card) are kept, never the runtimes: unloading frees their memory.
        self._unloaded: dict[str, list[LoadedModel]] = {}
        self._policies = dict(version_policies or {})
        self._lock = threading.Lock()  # serializes writers

    def policy(self, name: str) -> VersionPolicy:
        return self._policies.get(name, versions.DEFAULT)

    def set_policy(self, name: str, policy: VersionPolicy) -> None:
        with self._lock:
            self._policies[name] = policy

    def get(self, name: str, version: str | None = None) -> LoadedModel | None:
        loaded = self._models.get(name)
        if not loaded:
            return None
        if version is None:
            return next(reversed(loaded.values()))
        return loaded.get(str(version))

    def versions(self, name: str) -> list[str]:
        """Loaded versions of `name`, oldest activation first (the last is the active one)."""
        return list(self._models.get(name, {}))

    def put(self, model: LoadedModel) -> LoadedModel | None:
        """Activate `model` (a hot swap); return the version it replaced as the active one."""
        with self._lock:
            before = self._models.get(model.name, {})
            loaded = dict(before)
            old = next(reversed(loaded.values())) if loaded else None
            loaded.pop(model.version, None)  # re-activating a version moves it to the end
            loaded[model.version] = model
            keep = versions.to_keep(self.policy(model.name), list(loaded))
            kept = {v: loaded[v] for v in keep}
            self._models = {**self._models, model.name: kept}
            self._unloaded.pop(model.name, None)  # an update supersedes what was unloaded
        _retire([m for v, m in before.items() if m is not kept.get(v)])
        return old

    def remove(self, name: str) -> LoadedModel | None:
        """Drop every version of `name`; return the one that was active."""
        with self._lock:
            models = dict(self._models)
            loaded = models.pop(name, None)
            self._models = models
            return next(reversed(loaded.values())) if loaded else None

    def unload(self, name: str) -> LoadedModel | None:
        """Stop serving every version of `name` until `reload(name)`, an update or a restart."""
        with self._lock:
            models = dict(self._models)
            loaded = models.pop(name, None)
            self._models = models
            if not loaded:
                return None
            recipes = [replace(m, runtime=None) for m in loaded.values() if m.path is not None]
            if recipes:
                self._unloaded[name] = recipes
            return next(reversed(loaded.values()))

    def reload(self, name: str) -> LoadedModel | None:
        """Serve `name` again (every version it had) from the files it was unloaded from; return
        the active version, or None when it never was unloaded.

        Already loaded (e.g. an update arrived meanwhile) is success: that model stays."""
        with self._lock:
            current, recipes = self.get(name), self._unloaded.get(name)
        if current is not None or recipes is None:
            return current
        fresh = {}
        for r in recipes:  # open them all before serving any: a failure leaves the model unloaded
            assert r.path is not None
            fresh[r.version] = load_model(
                name, r.path, r.version, card=r.card, sha256=r.sha256, threads=r.threads
            )
        with self._lock:
            if name in self._models:  # an update got there while the files were opening: it wins
                return self.get(name)
            self._models = {**self._models, name: fresh}
            self._unloaded.pop(name, None)
        return self.get(name)

    def unloaded(self) -> list[str]:
        return sorted(self._unloaded)

    def names(self) -> list[str]:
        return sorted(self._models)

    def all(self) -> list[LoadedModel]:
        """Every loaded version; per name the active one comes last."""
        return [m for loaded in self._models.values() for m in loaded.values()]
