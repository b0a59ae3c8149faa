"""The inference engine: the Python API and what the HTTP server calls.

    engine = Engine(registry, cloud=CloudClient("http://cloud:8000"), policies={"digits": Policy()})
    result = engine.infer("digits", {"input": x})
    result.outputs, result.served_by, result.model_version, result.fallback_reason

Synchronous and thread-safe: the server runs it in its thread pool, in-process callers call it
directly (no event loop or HTTP on the hot path, so it costs about what session.run costs).
A model with a `batching` config and a batch axis runs through its dynamic batcher
(agent/batcher.py): the calling thread waits for its rows of the batch's outputs.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent import fallback as fb
from agent.batcher import Batcher, BatchingConfig, Entry
from agent.breaker import CLOSED
from agent.cloud import HTTP_ERROR, CloudClient, CloudError
from agent.drift import DriftRecorder
from agent.metrics import Metrics
from agent.models import LoadedModel, ModelRegistry
from agent.oip import OIPError
from agent.stats import Statistics, Timing

log = logging.getLogger(__name__)

LOCAL = "local"
CLOUD = "cloud"
CLIENT_CLOSED = 499  # nginx's status for a request whose client went away: nobody reads it


class Cancelled(OIPError):
    """The request was cancelled (its client went away) before it ran: no fallback, no answer."""

    def __init__(self) -> None:
        super().__init__(CLIENT_CLOSED, "the client closed the request before it ran")


@dataclass
class InferResult:
    model_name: str
    outputs: dict[str, np.ndarray]
    served_by: str
    model_version: str | None
    fallback_reason: str | None = None
    detail: str | None = None  # why the fallback itself failed, when it did

    def parameters(self) -> dict[str, Any]:
        p: dict[str, Any] = {"served_by": self.served_by, "model_version": self.model_version or ""}
        if self.fallback_reason:
            p["fallback_reason"] = self.fallback_reason
        if self.detail:
            p["fallback_error"] = self.detail
        return p


class Engine:
    def __init__(
        self,
        registry: ModelRegistry | None = None,
        cloud: CloudClient | None = None,
        policies: dict[str, fb.Policy] | None = None,
        default_policy: fb.Policy | None = None,
        metrics: Metrics | None = None,
        batching: dict[str, BatchingConfig] | None = None,
        drift: DriftRecorder | None = None,
    ):
        self.registry = registry or ModelRegistry()
        self.cloud = cloud
        self.policies = dict(policies or {})
        self.default_policy = default_policy or fb.Policy()
        self.metrics = metrics or Metrics()
        self.metrics.bind_models(self.registry.all)
        self.stats = Statistics()
        self.drift = drift or DriftRecorder()  # what was served, per version (heartbeat `drift`)
        # Only used for local deadlines: the waiting thread gives up, the worker finishes in the
        # background (a C++ session.run cannot be interrupted).
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="edgekit-local")
        self.batching = dict(batching or {})
        self._batchers: dict[str, Batcher] = {}
        self._batchers_lock = threading.Lock()
        self._unbatchable: set[str] = set()  # configured for batching, but no batch axis (warned once)
        self.shadow: Any = None  # agent.shadow.ShadowMirror: the server offers it answered requests

    def close(self) -> None:
        for b in list(self._batchers.values()):
            b.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.cloud:
            self.cloud.close()

    def policy(self, name: str) -> fb.Policy:
        return self.policies.get(name, self.default_policy)

    # ------------------------------------------------------------------------------------------
    def infer(
        self,
        name: str,
        feeds: dict[str, np.ndarray],
        version: str | None = None,
        timing: Timing | None = None,
    ) -> InferResult:
        """Answer a request; `version` pins a locally loaded version (404 when it is not loaded)."""
        timing = timing or Timing()
        t0 = time.perf_counter()
        try:
            result = self._route(name, feeds, version, timing)
        except OIPError as e:
            self.metrics.requests.inc(name, "none", f"error_{e.status}")
            raise
        self.metrics.requests.inc(name, result.served_by, "ok")
        self.metrics.latency.observe(name, result.served_by, value=time.perf_counter() - t0)
        if result.fallback_reason:
            self.metrics.fallbacks.inc(name, result.fallback_reason)
        return result

    def submit_local(
        self, name: str, feeds: dict[str, np.ndarray], version: str | None, timing: Timing
    ) -> tuple[LoadedModel, Future] | None:
        """Queue a request for a batched model that never calls the cloud, without waiting: the
        server's event loop awaits the future, then calls `local_done`. None when `name` is not
        such a model (use `infer`)."""
        try:
            model = self.local_model(name, version)
            if model is None or not self.never_remote(name):
                return None
            batcher = self.batcher(model)
            if batcher is None:
                return None
            self._check(model, feeds, timing)
            return model, self._submit(batcher, model, feeds, timing)
        except OIPError as e:
            self.metrics.requests.inc(name, "none", f"error_{e.status}")
            raise

    def local_done(self, model: LoadedModel, future: Future, started: float) -> InferResult:
        """The answer to a request `submit_local` queued (its future is done), counted as
        `infer` counts a local answer."""
        try:
            outputs = self._result(future)
        except OIPError as e:
            self.metrics.requests.inc(model.name, "none", f"error_{e.status}")
            raise
        except Exception as e:
            self.metrics.requests.inc(model.name, "none", "error_500")
            raise OIPError(500, f"local inference failed: {e}") from e
        self.metrics.requests.inc(model.name, LOCAL, "ok")
        self.metrics.latency.observe(model.name, LOCAL, value=time.perf_counter() - started)
        return self._local_result(model, outputs, None)

    def local_model(self, name: str, version: str | None) -> LoadedModel | None:
        """The local model a request for (name, version) would run, or OIPError(404) for a version
        that is not loaded: the version in a URL is honoured, never answered by another one."""
        model = self.registry.get(name, version)
        if version is not None and model is None:
            loaded = self.registry.versions(name)
            have = f"loaded: {', '.join(loaded)}" if loaded else "no version is loaded"
            raise OIPError(404, f"model {name!r} version {version!r} is not loaded ({have})")
        return model

    def request_failed(self, name: str, version: str | None, status: int, timing: Timing) -> None:
        """A request refused before it reached the engine (undecodable body): count it."""
        self.metrics.requests.inc(name, "none", f"error_{status}")
        model = self.registry.get(name, version)
        if model is not None:
            self._failed(model, timing)

    def _failed(self, model: LoadedModel, timing: Timing) -> None:
        self.metrics.version_failure.inc(model.name, model.version)
        self.stats.failure(model.name, model.version, int((time.perf_counter() - timing.received) * 1e9))

    def _check(self, model: LoadedModel, feeds: dict[str, np.ndarray], timing: Timing) -> None:
        """Validate a request against the model (its cost joins the request's compute_input)."""
        self.metrics.version_requests.inc(model.name, model.version)
        t0 = time.perf_counter()
        try:
            model.validate(feeds)
        except OIPError:
            self._failed(model, timing)
            raise
        self.drift.observe_inputs(model, feeds)
        timing.input_ns += int((time.perf_counter() - t0) * 1e9)

    def batcher(self, model: LoadedModel) -> Batcher | None:
        """The dynamic batcher `model` runs through, or None (not configured, or no batch axis)."""
        b = self._batchers.get(model.name)
        if b is not None or model.name not in self.batching:
            return b if b is not None and model.has_batch_axis else None
        if not model.has_batch_axis:
            if model.name not in self._unbatchable:
                self._unbatchable.add(model.name)
                log.warning(
                    "model %s has no batch axis (a dynamic leading dim on every input and "
                    "output): served unbatched",
                    model.name,
                )
            return None
        with self._batchers_lock:
            b = self._batchers.get(model.name)
            if b is None:
                cfg = self.batching[model.name]
                b = self._batchers[model.name] = Batcher(
                    model.name, cfg, self._batch_done, self._batch_failed
                )
        return b

    def _submit(
        self,
        batcher: Batcher,
        model: LoadedModel,
        feeds: dict[str, np.ndarray],
        timing: Timing,
        deadline: float | None = None,
    ) -> Future:
        future = batcher.submit(model, feeds, timing, deadline)
        timing.attach(future)
        return future

    @staticmethod
    def _result(future: Future, timeout: float | None = None) -> dict[str, np.ndarray]:
        try:
            return future.result(timeout)
        except CancelledError:
            raise Cancelled() from None

    def _batch_done(self, entries: list[Entry], started: float, seconds: float) -> None:
        """A batch answered: per request its queue time and the batch's compute time (Triton:
        one execution, one inference per request)."""
        model = entries[0].model
        key = (model.name, model.version)
        requests = []
        for e in entries:
            queue = max(0.0, started - e.timing.received - e.timing.input_ns / 1e9)
            self.metrics.queue_time.observe(*key, value=queue)
            self.metrics.compute_time.observe(*key, value=seconds)
            requests.append((int(queue * 1e9), e.timing.input_ns))
        samples = sum(e.samples for e in entries)
        self.metrics.version_success.inc(*key, amount=len(entries))
        self.metrics.batch_size.observe(*key, value=samples)
        self.stats.batch(*key, requests, infer_ns=int(seconds * 1e9), size=samples)

    def _batch_failed(self, entries: list[Entry], error: BaseException) -> None:
        for e in entries:
            self._failed(e.model, e.timing)

    def _run(self, model: LoadedModel, feeds: dict[str, np.ndarray], timing: Timing) -> dict[str, np.ndarray]:
        """One local run, with its queue and compute time recorded apart."""
        batcher = self.batcher(model)
        if batcher is not None:  # the batch's accounting is done by _batch_done/_batch_failed
            return self._result(self._submit(batcher, model, feeds, timing))
        t0 = time.perf_counter()
        try:
            outputs = model.run(feeds)
        except Exception:
            self._failed(model, timing)
            raise
        compute = time.perf_counter() - t0
        model.last_compute_s = compute
        queue = max(0.0, t0 - timing.received - timing.input_ns / 1e9)
        key = (model.name, model.version)
        self.metrics.version_success.inc(*key)
        self.metrics.queue_time.observe(*key, value=queue)
        self.metrics.compute_time.observe(*key, value=compute)
        self.stats.success(
            *key, queue_ns=int(queue * 1e9), input_ns=timing.input_ns, infer_ns=int(compute * 1e9)
        )
        return outputs

    def _route(
        self, name: str, feeds: dict[str, np.ndarray], version: str | None, timing: Timing
    ) -> InferResult:
        pol = self.policy(name)
        model = self.local_model(name, version)  # one lookup: a later hot swap does not affect us
        if pol.mode == fb.LOCAL_ONLY or (pol.mode == fb.LOCAL_FIRST and self.cloud is None):
            if model is None:
                raise OIPError(404, f"unknown model {name!r}")
            self._check(model, feeds, timing)
            try:
                return self._local_result(model, self._run(model, feeds, timing), None)
            except OIPError:
                raise
            except Exception as e:
                raise OIPError(500, f"local inference failed: {e}") from e
        if pol.mode == fb.CLOUD_ONLY:
            try:
                return self._cloud(name, feeds, pol, reason=None)
            except CloudError as e:
                raise OIPError(
                    503, f"model {name!r} is cloud-only and the cloud is unavailable: {e.message}"
                ) from e
        if pol.mode == fb.CLOUD_FIRST:
            return self._cloud_first(name, model, feeds, pol, timing)
        return self._local_first(name, model, feeds, pol, timing)

    def _local_result(
        self, model: LoadedModel, outputs, reason: str | None, detail: str | None = None
    ) -> InferResult:
        self.drift.observe_outputs(model, outputs)
        return InferResult(model.name, outputs, LOCAL, model.version, reason, detail)

    def _cloud(self, name: str, feeds, pol: fb.Policy, reason: str | None) -> InferResult:
        if self.cloud is None:
            raise OIPError(503, f"model {name!r} needs the cloud endpoint but none is configured")
        deadline = pol.cloud_deadline_ms / 1000 if pol.cloud_deadline_ms else None
        try:
            r = self.cloud.infer(pol.cloud_model or name, feeds, deadline=deadline)
        except CloudError as e:
            if e.kind == HTTP_ERROR and e.status is not None and 400 <= e.status < 500:
                raise OIPError(e.status, f"cloud: {e.message}") from e
            raise
        finally:
            self._breaker_metric()
        return InferResult(name, r.outputs, CLOUD, r.model_version, reason)

    def _breaker_metric(self) -> None:
        if self.cloud is not None:
            self.metrics.breaker_state.set(value=0 if self.cloud.breaker.state == CLOSED else 1)

    def _local_first(
        self, name: str, model: LoadedModel | None, feeds, pol: fb.Policy, timing: Timing
    ) -> InferResult:
        if model is None:
            return self._cloud_or_503(
                name, feeds, pol, fb.MISSING_MODEL, f"model {name!r} is not loaded locally"
            )
        # A malformed request is the client's error: the cloud would refuse it too.
        self._check(model, feeds, timing)
        future = None
        batcher = self.batcher(model)
        try:
            if pol.local_deadline_ms:
                limit = pol.local_deadline_ms / 1000
                if batcher is not None:  # the deadline counts from the request's arrival
                    future = self._submit(batcher, model, feeds, timing, timing.received + limit)
                    limit = max(0.0, timing.received + limit - time.perf_counter())
                else:
                    future = self._pool.submit(self._run, model, feeds, timing)
                outputs = self._result(future, limit)
            else:
                outputs = self._run(model, feeds, timing)
        except FutureTimeout:
            assert future is not None
            # Still queued for a batch: drop it there, the cloud answers instead.
            dropped = batcher is not None and future.cancel()
            try:
                return self._cloud(name, feeds, pol, fb.DEADLINE)
            except CloudError as e:
                # The cloud cannot help either: the late local answer beats no answer.
                late = self._run(model, feeds, timing) if dropped else self._result(future)
                return self._local_result(model, late, fb.DEADLINE, e.message)
        except Cancelled:
            raise
        except Exception as e:
            log.warning("local inference of %s failed: %s", name, e)
            return self._cloud_or_503(name, feeds, pol, fb.LOCAL_ERROR, f"local inference failed: {e}")
        if pol.confidence_threshold is not None and model.is_classifier:
            key = pol.scores_output or model.outputs[0].name
            conf = fb.top1_confidence(outputs[key])
            if conf < pol.confidence_threshold:
                try:
                    return self._cloud(name, feeds, pol, fb.LOW_CONFIDENCE)
                except CloudError as e:
                    return self._local_result(model, outputs, fb.LOW_CONFIDENCE, e.message)
        return self._local_result(model, outputs, None)

    def _cloud_or_503(self, name: str, feeds, pol: fb.Policy, reason: str, why: str) -> InferResult:
        try:
            return self._cloud(name, feeds, pol, reason)
        except CloudError as e:
            raise OIPError(503, f"{why}; cloud fallback failed: {e.message}") from e

    def _cloud_first(
        self, name: str, model: LoadedModel | None, feeds, pol: fb.Policy, timing: Timing
    ) -> InferResult:
        try:
            return self._cloud(name, feeds, pol, None)
        except CloudError as e:
            if model is None:
                raise OIPError(
                    503, f"cloud unavailable ({e.message}) and model {name!r} not loaded locally"
                ) from e
            self._check(model, feeds, timing)
            try:
                outputs = self._run(model, feeds, timing)
            except Cancelled:
                raise
            except Exception as le:
                raise OIPError(503, f"cloud unavailable ({e.message}); local inference failed: {le}") from le
            return self._local_result(model, outputs, e.kind)

    def never_remote(self, name: str) -> bool:
        """Requests for `name` can never call the cloud (so never block on the network)."""
        pol = self.policy(name)
        return pol.mode == fb.LOCAL_ONLY or (pol.mode == fb.LOCAL_FIRST and self.cloud is None)

    # model metadata for the server ------------------------------------------------------------
    def knows(self, name: str) -> bool:
        """Could a request for `name` be answered by anyone (local model, or a cloud we may ask)?"""
        if self.registry.get(name) is not None:
            return True
        pol = self.policy(name)
        return self.cloud is not None and pol.mode != fb.LOCAL_ONLY

    def ready(self, name: str) -> bool:
        pol = self.policy(name)
        if self.registry.get(name) is not None and pol.mode != fb.CLOUD_ONLY:
            return True
        return self.cloud is not None and pol.mode != fb.LOCAL_ONLY and self.cloud.breaker.state == CLOSED
