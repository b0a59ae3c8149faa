"""Durable per-model update state machine.

  idle -> downloading -> verifying -> staged -> smoke_tested -> active
                                               smoke_tested -> shadow  (a shadow manifest)
  any in-progress state -> failed -> rolled_back

`shadow` ends a shadow manifest: its version is installed beside the active one (the store's
pointer names it as the model's shadow) and compared on mirrored requests, never served.

Every transition is written (fsync + rename) *before* it is reported, so after kill -9 or a
power loss the file says exactly how far an update got; `resume_action` turns that into what a
restart must do: resume the download, re-verify, or redo the (idempotent) smoke test and swap.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.durable import atomic_write_json, read_json

IDLE = "idle"
DOWNLOADING = "downloading"
VERIFYING = "verifying"
STAGED = "staged"
SMOKE_TESTED = "smoke_tested"
ACTIVE = "active"
FAILED = "failed"
ROLLED_BACK = "rolled_back"
SHADOW = "shadow"

STATES = (IDLE, DOWNLOADING, VERIFYING, STAGED, SMOKE_TESTED, ACTIVE, FAILED, ROLLED_BACK, SHADOW)
IN_PROGRESS = frozenset({DOWNLOADING, VERIFYING, STAGED, SMOKE_TESTED})
TERMINAL = frozenset({IDLE, ACTIVE, ROLLED_BACK, SHADOW})

_ALLOWED: dict[str, frozenset[str]] = {
    IDLE: frozenset({DOWNLOADING}),
    DOWNLOADING: frozenset({DOWNLOADING, VERIFYING, FAILED}),
    VERIFYING: frozenset({VERIFYING, STAGED, FAILED}),
    STAGED: frozenset({STAGED, SMOKE_TESTED, FAILED}),
    SMOKE_TESTED: frozenset({SMOKE_TESTED, ACTIVE, SHADOW, FAILED}),
    ACTIVE: frozenset({DOWNLOADING}),
    SHADOW: frozenset({DOWNLOADING}),
    FAILED: frozenset({ROLLED_BACK}),
    ROLLED_BACK: frozenset({DOWNLOADING}),
}


class TransitionError(RuntimeError):
    pass


@dataclass
class ModelState:
    model: str
    state: str = IDLE
    version: str | None = None  # the version being installed (or installed, when active)
    sequence: int = 0
    manifest: dict[str, Any] | None = None  # the signed document being applied (for resume)
    reason: str | None = None
    detail: str | None = None
    updated_at: float = field(default_factory=time.time)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelState:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


class StateStore:
    """One JSON file per model under `root`; thread-safe."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _file(self, model: str) -> Path:
        return self.root / f"{model}.json"

    def get(self, model: str) -> ModelState:
        data = read_json(self._file(model))
        return ModelState.from_dict(data) if data else ModelState(model=model)

    def all(self) -> list[ModelState]:
        return [self.get(p.stem) for p in sorted(self.root.glob("*.json"))]

    def transition(self, model: str, new: str, **changes: Any) -> ModelState:
        if new not in STATES:
            raise TransitionError(f"unknown state {new!r}")
        with self._lock:
            st = self.get(model)
            if new not in _ALLOWED[st.state]:
                raise TransitionError(f"{model}: {st.state} -> {new} is not a valid transition")
            st.state = new
            if new not in (FAILED, ROLLED_BACK):
                st.reason = st.detail = None
            for k, v in changes.items():
                setattr(st, k, v)
            st.updated_at = time.time()
            atomic_write_json(self._file(model), asdict(st))
            return st

    def last_accepted_sequence(self, model: str) -> int:
        return self.get(model).sequence

    def max_sequence(self) -> int:
        """The newest sequence any model's state records, -1 if none.

        A manifest's acceptance is made durable by the very write that moves its model to
        `downloading` (the state carries its sequence): one atomic rename, so no power loss can
        record the sequence without the update it belongs to, which a restart would then refuse
        as a replay of itself. The replay floor after a restart is therefore this maximum."""
        return max((st.sequence for st in self.all()), default=-1)


def resume_action(st: ModelState) -> str | None:
    """What a restart must do for a model found in `st`: None, "resume" or "rollback"."""
    if st.state in IN_PROGRESS:
        return "resume" if st.manifest else "rollback"
    if st.state == FAILED:
        return "rollback"  # crashed between failed and rolled_back: finish the rollback
    return None
