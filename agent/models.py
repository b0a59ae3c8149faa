"""Loaded models and the name -> model table the server reads.

Hot swap is a reference swap: a request looks its model up once and keeps that object until it
answers, so an update replacing the entry never pulls a runtime out from under a running
request; the old runtime is freed when its last request drops the reference.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.oip import OIPError, datatype_of
from edgekit.modelcard import ModelCard, TensorSpec


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

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.runtime.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.runtime.outputs

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

    def metadata(self) -> dict[str, Any]:
        def t(s: TensorSpec) -> dict[str, Any]:
            return {
                "name": s.name,
                "datatype": datatype_of(s.dtype),
                "shape": [d if isinstance(d, int) and d > 0 else -1 for d in s.shape],
            }

        return {
            "name": self.name,
            "versions": [self.version],
            "platform": getattr(self.runtime, "name", "unknown"),
            "inputs": [t(s) for s in self.inputs],
            "outputs": [t(s) for s in self.outputs],
        }


def load_model(
    name: str,
    path: str | Path,
    version: str = "1",
    *,
    card: ModelCard | None = None,
    sha256: str | None = None,
    threads: int | None = None,
) -> LoadedModel:
    import time

    from targets.runtimes.base import open_runtime

    runtime = open_runtime(
        path, threads=threads, output_names=[o.name for o in card.outputs] if card else None
    )
    return LoadedModel(name, str(version), runtime, Path(path), sha256, card, time.time(), threads=threads)


class ModelRegistry:
    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}
        # What the repository `unload` route took offline, so `load` can reopen it. Only the
        # recipe (path, version, card) is kept, never the runtime: unloading frees its memory.
        self._unloaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()  # serializes writers; readers only do one dict lookup

    def get(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def put(self, model: LoadedModel) -> LoadedModel | None:
        with self._lock:
            old = self._models.get(model.name)
            models = dict(self._models)
            models[model.name] = model
            self._models = models  # one reference assignment: readers see old or new table
            self._unloaded.pop(model.name, None)  # an update supersedes what was unloaded
            return old

    def remove(self, name: str) -> LoadedModel | None:
        with self._lock:
            models = dict(self._models)
            old = models.pop(name, None)
            self._models = models
            return old

    def unload(self, name: str) -> LoadedModel | None:
        """Stop serving `name` until `reload(name)`, an update or a restart brings it back."""
        with self._lock:
            models = dict(self._models)
            old = models.pop(name, None)
            self._models = models
            if old is not None and old.path is not None:
                self._unloaded[name] = replace(old, runtime=None)
            return old

    def reload(self, name: str) -> LoadedModel | None:
        """Serve `name` again from the file it was unloaded from; None if it never was unloaded.

        Already loaded (e.g. an update arrived meanwhile) is success: that model stays."""
        with self._lock:
            current, recipe = self._models.get(name), self._unloaded.get(name)
        if current is not None or recipe is None:
            return current
        assert recipe.path is not None
        fresh = load_model(
            name, recipe.path, recipe.version, card=recipe.card, sha256=recipe.sha256, threads=recipe.threads
        )
        with self._lock:
            if name in self._models:  # an update got there while the file was opening: it wins
                return self._models[name]
            self._models = {**self._models, name: fresh}
            self._unloaded.pop(name, None)
        return fresh

    def unloaded(self) -> list[str]:
        return sorted(self._unloaded)

    def names(self) -> list[str]:
        return sorted(self._models)

    def all(self) -> list[LoadedModel]:
        return list(self._models.values())
