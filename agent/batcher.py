"""Dynamic batching per model, as Triton's dynamic batcher does it.

    [models.NAME]
    batching = {max_batch_size = 32, max_queue_delay_us = 500, preferred_batch_sizes = [8, 16, 32]}

Requests for a model with a batch axis (`has_batch_axis`: a dynamic leading dim shared by every
input and output) queue here; one worker thread per model concatenates the queued requests along
axis 0, runs them as one `session.run` and splits the outputs back. A request of several samples
counts as that many samples toward `max_batch_size`; a request larger than it runs alone.

When to run is a pure decision (`plan`): run at once when the queued samples fill
`max_batch_size` or reach the largest preferred size; otherwise wait for more until the oldest
request has waited `max_queue_delay_us` (or a queued request's deadline arrives), then run the
largest prefix that is a preferred size, else everything that fits. While a batch runs, requests
keep queueing, so under load batches grow on their own and at low load a request waits at most
the queue delay.

A batch only holds requests for the same loaded model object (a hot swap leaves the queued
requests of the old version on the old version: none is dropped or moved) with the same
non-batch dims and dtypes. A cancelled request (its client went away, or its deadline sent it to
the cloud) is dropped before its batch runs. A request with a deadline (local-first's
`local_deadline_ms`) stops the wait for company in time for a run to finish by it; if the worker
is busy past it, the engine cancels it and asks the cloud.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit.modelcard import TensorSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    max_queue_delay_us: int = 500
    preferred_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, not {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, not {self.max_queue_delay_us}")
        bad = [p for p in self.preferred_batch_sizes if not 1 <= p <= self.max_batch_size]
        if bad:
            raise ValueError(
                f"preferred_batch_sizes {bad} are outside 1..max_batch_size ({self.max_batch_size})"
            )
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(self.preferred_batch_sizes))))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BatchingConfig:
        """A `batching` table; keys it leaves out take the defaults."""
        return cls(
            int(d.get("max_batch_size", cls.max_batch_size)),
            int(d.get("max_queue_delay_us", cls.max_queue_delay_us)),
            tuple(int(p) for p in d.get("preferred_batch_sizes") or ()),
        )


def configs_from(models: dict[str, dict[str, Any]]) -> dict[str, BatchingConfig]:
    """The [models.NAME] tables that have a `batching` table -> their batching configs."""
    return {
        n: BatchingConfig.from_dict(m["batching"]) for n, m in models.items() if m.get("batching") is not None
    }


def has_batch_axis(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """Samples may be concatenated on axis 0: every input and output has a dynamic leading dim,
    named alike where named (a sequence-first output such as a CRNN's [T, N, C], a fixed batch or
    a scalar makes the model not batchable). The rule converters/shapes.py `batchable` applies to
    a card; runtimes report unnamed dynamic dims as None, which are taken as the batch axis too."""
    if not inputs or not outputs:
        return False
    leads = [t.shape[0] if t.shape else 1 for t in [*inputs, *outputs]]
    if any(isinstance(d, int) and d > 0 for d in leads):
        return False
    named = {d for d in leads if isinstance(d, str) and d}
    return len(named) <= 1


def plan(sizes: Sequence[int], waited_us: float, cfg: BatchingConfig, urgent: bool = False) -> int:
    """How many of the queued requests (their sample counts, oldest first) to run now; 0 = wait.

    `waited_us` is how long the oldest has waited; `urgent` says a queued request's deadline has
    come (waiting longer could only make it miss)."""
    if not sizes:
        return 0
    fit, total = 0, 0
    for n in sizes:
        if fit and total + n > cfg.max_batch_size:
            break
        fit, total = fit + 1, total + n
    if total >= cfg.max_batch_size or fit < len(sizes):
        return fit  # full: the next request would not fit
    preferred = cfg.preferred_batch_sizes
    if preferred and total >= preferred[-1]:
        return _preferred_prefix(sizes[:fit], preferred) or fit
    if waited_us >= cfg.max_queue_delay_us or urgent:
        return _preferred_prefix(sizes[:fit], preferred) or fit
    return 0


def _preferred_prefix(sizes: Sequence[int], preferred: Sequence[int]) -> int:
    """The longest prefix whose samples add up to a preferred size (0 when none does)."""
    best, total = 0, 0
    for i, n in enumerate(sizes, 1):
        total += n
        if total in preferred:
            best = i
    return best


@dataclass(eq=False)
class Entry:
    """One queued request."""

    model: Any  # agent.models.LoadedModel: the object the request looked up
    feeds: dict[str, np.ndarray]
    samples: int
    key: tuple[Any, ...]  # requests with equal keys can share a batch
    timing: Any  # agent.stats.Timing
    deadline: float | None  # perf_counter time by which it should have run
    future: Future = field(default_factory=Future)
    batch_started: float = 0.0


OnBatch = Callable[[list[Entry], float, float], None]  # entries, run start, run seconds
OnFail = Callable[[list[Entry], BaseException], None]


class Batcher:
    """The queue and worker thread of one model name (every version of it)."""

    def __init__(self, name: str, cfg: BatchingConfig, on_batch: OnBatch, on_fail: OnFail):
        self.name, self.cfg = name, cfg
        self._on_batch, self._on_fail = on_batch, on_fail
        self._queue: list[Entry] = []
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"edgekit-batch-{name}", daemon=True)
        self._thread.start()

    def submit(
        self, model: Any, feeds: dict[str, np.ndarray], timing: Any, deadline: float | None = None
    ) -> Future:
        """Queue a validated request; its future gets the outputs (or the batch's exception, or is
        cancelled). Cancelling the future before its batch starts drops the request."""
        first = next(iter(feeds.values()))
        samples = int(first.shape[0]) if first.ndim else 1
        key = (id(model), *((n, a.dtype.str, a.shape[1:]) for n, a in sorted(feeds.items())))
        entry = Entry(model, feeds, samples, key, timing, deadline)
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the batcher of {self.name!r} is closed")
            self._queue.append(entry)
            self._cond.notify()
        return entry.future

    def queued(self) -> int:
        with self._cond:
            return sum(1 for e in self._queue if not e.future.cancelled())

    def close(self) -> None:
        """Stop taking requests; the worker runs what is queued, then exits."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # the worker --------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[Entry] | None:
        with self._cond:
            while True:
                self._queue = [e for e in self._queue if not e.future.cancelled()]
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                now = time.perf_counter()
                wake = None
                for group in _groups(self._queue):  # oldest first; a waiting group blocks no other
                    take, at = self._decide(group, now)
                    if take:
                        batch = self._take(group[:take])
                        if batch:
                            return batch
                        wake = now  # all of it was cancelled meanwhile: look again
                        break
                    wake = at if wake is None else min(wake, at)
                if wake is not None and wake > now:
                    self._cond.wait(wake - now)

    def _decide(self, group: list[Entry], now: float) -> tuple[int, float]:
        """(requests to run now, when to look again if none). A request with a deadline stops
        the wait for company when only a run's time (the model's last) is left before it."""
        run_s = group[0].model.last_compute_s or 0.0
        latest = [e.deadline - run_s for e in group if e.deadline is not None]
        urgent = self._closed or (bool(latest) and min(latest) <= now)
        oldest = group[0].timing.received
        take = plan([e.samples for e in group], (now - oldest) * 1e6, self.cfg, urgent)
        return take, min([oldest + self.cfg.max_queue_delay_us / 1e6, *latest])

    def _take(self, chosen: list[Entry]) -> list[Entry]:
        taken = set(map(id, chosen))
        self._queue = [e for e in self._queue if id(e) not in taken]
        # A future cancelled from here on is too late: the batch is being formed.
        return [e for e in chosen if e.future.set_running_or_notify_cancel()]

    def _run(self, batch: list[Entry]) -> None:
        model = batch[0].model
        t0 = time.perf_counter()
        try:
            if len(batch) == 1:
                outputs = model.run(batch[0].feeds)
                parts = [outputs]
            else:
                feeds = {n: np.concatenate([e.feeds[n] for e in batch]) for n in batch[0].feeds}
                parts = _split(model.run(feeds), [e.samples for e in batch])
        except BaseException as e:  # every waiting request must hear of it
            log.debug("batch of %d for %s failed: %s", len(batch), self.name, e)
            self._report(self._on_fail, batch, e)
            for entry in batch:
                entry.future.set_exception(e)
            return
        elapsed = time.perf_counter() - t0
        for entry in batch:
            entry.batch_started = t0
        self._report(self._on_batch, batch, t0, elapsed)
        for entry, part in zip(batch, parts, strict=True):
            entry.future.set_result(part)

    def _report(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:  # accounting must never keep an answer from its request
            log.error("batch accounting for %s failed: %s: %s", self.name, type(e).__name__, e)


def _groups(queue: list[Entry]) -> list[list[Entry]]:
    """Queued requests that can share a batch, each group in arrival order, oldest group first."""
    groups: dict[tuple[Any, ...], list[Entry]] = {}
    for e in queue:
        groups.setdefault(e.key, []).append(e)
    return list(groups.values())


def _split(outputs: dict[str, np.ndarray], samples: list[int]) -> list[dict[str, np.ndarray]]:
    """Each request's rows of every output (views, no copy)."""
    total = sum(samples)
    odd = [n for n, out in outputs.items() if out.ndim == 0 or out.shape[0] != total]
    if odd:  # a dynamic leading dim that was not a batch axis after all: never mix requests' rows
        raise RuntimeError(f"output(s) {odd} do not have one row per sample of the batch ({total})")
    bounds = np.cumsum([0, *samples]).tolist()
    return [{n: out[bounds[i] : bounds[i + 1]] for n, out in outputs.items()} for i in range(len(samples))]
