"""The dynamic batcher: the pure batching decision, and real batches on a real onnxruntime model."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from agent import fallback as fb
from agent.batcher import Batcher, BatchingConfig, configs_from, has_batch_axis, plan
from agent.engine import Cancelled, Engine
from agent.models import ModelRegistry, load_model
from agent.stats import Timing
from edgekit.modelcard import ModelCard, TensorSpec
from tests.agent.support import card, expected_probs

pytestmark = pytest.mark.timeout(60)

CFG = BatchingConfig(max_batch_size=8, max_queue_delay_us=500, preferred_batch_sizes=(2, 4))


@pytest.mark.parametrize(
    ("sizes", "waited_us", "urgent", "take"),
    [
        ([], 10_000, False, 0),  # nothing queued
        ([1], 0, False, 0),  # alone and fresh: wait for company
        ([1], 500, False, 1),  # waited the whole delay: run what there is
        ([1, 1, 1], 600, False, 2),  # delay over: the longest preferred prefix (2)
        ([1, 1, 1, 1, 1], 600, False, 4),  # ... preferred 4 of 5
        ([1, 1, 1, 1], 0, False, 4),  # reached the largest preferred size: at once
        ([4, 4], 0, False, 2),  # full at max_batch_size: at once
        ([4, 3, 2], 0, False, 2),  # the next request would not fit: run what fits
        ([12], 0, False, 1),  # larger than max_batch_size: runs alone
        ([3], 0, True, 1),  # a queued deadline came: no more waiting
        ([3, 3], 600, False, 2),  # no prefix is preferred: everything that fits
    ],
)
def test_plan(sizes: list[int], waited_us: float, urgent: bool, take: int) -> None:
    assert plan(sizes, waited_us, CFG, urgent) == take


def test_plan_without_preferred_sizes_waits_until_full_or_late() -> None:
    cfg = BatchingConfig(max_batch_size=4, max_queue_delay_us=100)
    assert plan([1, 1, 1], 50, cfg) == 0
    assert plan([1, 1, 1, 1], 50, cfg) == 4
    assert plan([1, 1, 1], 100, cfg) == 3


def test_config_checks_and_table() -> None:
    with pytest.raises(ValueError, match="outside"):
        BatchingConfig(max_batch_size=4, preferred_batch_sizes=(8,))
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchingConfig(max_batch_size=0)
    got = configs_from({"a": {"batching": {"max_batch_size": 16}}, "b": {"policy": "local-only"}})
    assert got == {"a": BatchingConfig(16, 500, ())}


def _spec(shape: list) -> TensorSpec:
    return TensorSpec("t", "float32", shape)


@pytest.mark.parametrize(
    ("inputs", "outputs", "ok"),
    [
        ([["N", 4]], [["N", 3]], True),
        ([[None, 4]], [[None, 3]], True),  # unnamed dynamic dims (runtimes report these)
        ([["N", 4]], [["T", "N", 3]], False),  # sequence-first output
        ([[1, 4]], [[1, 3]], False),  # fixed batch
        ([["N", 4]], [[]], False),  # scalar output
        ([], [["N"]], False),
    ],
)
def test_has_batch_axis(inputs: list, outputs: list, ok: bool) -> None:
    assert has_batch_axis([_spec(s) for s in inputs], [_spec(s) for s in outputs]) is ok


@pytest.fixture()
def engine(model_dir: Path):
    reg = ModelRegistry()
    reg.put(load_model("cls", model_dir / "cls_v1.onnx", "1"))
    # A long delay: batches here run only when full, so their makeup is deterministic.
    eng = Engine(
        reg,
        default_policy=fb.Policy(mode=fb.LOCAL_ONLY),
        batching={"cls": BatchingConfig(max_batch_size=6, max_queue_delay_us=30_000_000)},
    )
    yield eng
    eng.close()


def _concurrently(fns: list) -> list:
    out: list = [None] * len(fns)

    def call(i: int) -> None:
        try:
            out[i] = fns[i]()
        except Exception as e:  # handed to the assertions
            out[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_requests_of_different_sizes_are_concatenated_and_split_back(engine: Engine) -> None:
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 4)).astype(np.float32) for n in (1, 2, 3)]  # 6 samples: one full batch
    results = _concurrently([lambda x=x: engine.infer("cls", {"input": x}) for x in xs])
    for x, r in zip(xs, results, strict=True):
        assert not isinstance(r, Exception), r
        np.testing.assert_allclose(r.outputs["probs"], expected_probs(x), rtol=1e-5, atol=1e-6)
    doc = engine.stats.snapshot([("cls", "1")])["model_stats"][0]
    # Triton's semantics: one execution for the batch, one inference per request.
    assert (doc["execution_count"], doc["inference_count"]) == (1, 3)
    assert doc["batch_stats"][0]["batch_size"] == 6 and doc["batch_stats"][0]["compute_infer"]["count"] == 1
    assert engine.metrics.queue_time.count("cls", "1") == 3
    assert engine.metrics.batch_size.count("cls", "1") == 1


def test_a_cancelled_request_is_dropped_before_it_runs(engine: Engine) -> None:
    model = engine.registry.get("cls")
    timing = Timing()
    timing.cancel()  # its client went away before it was even queued
    with pytest.raises(Cancelled):
        engine._run(model, {"input": np.ones((1, 4), np.float32)}, timing)
    queued = Timing()
    batcher = engine.batcher(model)
    assert batcher is not None
    future = batcher.submit(model, {"input": np.ones((2, 4), np.float32)}, queued)
    queued.attach(future)
    queued.cancel()  # still queued (the batch is not full): dropped
    assert future.cancelled()
    x = np.ones((6, 4), np.float32)
    assert engine.infer("cls", {"input": x}).outputs["probs"].shape == (6, 3)  # a full batch alone
    doc = engine.stats.snapshot([("cls", "1")])["model_stats"][0]
    assert (doc["execution_count"], doc["inference_count"]) == (1, 1)
    assert [b["batch_size"] for b in doc["batch_stats"]] == [6]  # the cancelled 1 + 2 never ran


def test_hot_swap_keeps_queued_requests_on_their_version(engine: Engine, model_dir: Path) -> None:
    """Requests queued for version 1 run on version 1 even after version 2 became active; none
    is dropped, and the versions never share a batch."""
    v1 = engine.registry.get("cls")
    batcher = engine.batcher(v1)
    assert batcher is not None
    x = np.array([[2.0, 1.0, 0.0, 0.0]] * 3, np.float32)
    old = batcher.submit(v1, {"input": x}, Timing())
    engine.registry.put(load_model("cls", model_dir / "cls_v2.onnx", "2"))
    v2 = engine.registry.get("cls")
    new = [batcher.submit(v2, {"input": x}, Timing()) for _ in range(2)]  # full batch of v2 first
    np.testing.assert_allclose(new[0].result(10)["probs"], expected_probs(x, 0.5), rtol=1e-5)
    assert not old.done()  # 3 + 6 > 6: v1's request waits for its own batch
    old_full = batcher.submit(v1, {"input": x}, Timing())  # fills v1's batch
    np.testing.assert_allclose(old.result(10)["probs"], expected_probs(x), rtol=1e-5)
    np.testing.assert_allclose(old_full.result(10)["probs"], expected_probs(x), rtol=1e-5)


def test_a_model_without_batch_axis_is_served_unbatched(model_dir: Path) -> None:
    reg = ModelRegistry()
    reg.put(load_model("fragile", model_dir / "fragile.onnx", "1"))  # its output is [1, 3]
    eng = Engine(reg, batching={"fragile": BatchingConfig(max_batch_size=2, max_queue_delay_us=30_000_000)})
    try:
        assert eng.batcher(reg.get("fragile")) is None
        one = np.ones((1, 4), np.float32)
        results = _concurrently([lambda: eng.infer("fragile", {"input": one})] * 2)
        assert all(r.outputs["probs"].shape == (1, 3) for r in results), results
    finally:
        eng.close()


def test_a_failing_batch_fails_each_request_and_counts_it(model_dir: Path) -> None:
    """A card that claims a batch axis the graph lacks: the batch fails inside onnxruntime, and
    every request in it gets the error (and is counted as a failure)."""
    lying = ModelCard.from_dict(card("fragile"))
    reg = ModelRegistry()
    reg.put(load_model("fragile", model_dir / "fragile.onnx", "1", card=lying))
    eng = Engine(
        reg,
        default_policy=fb.Policy(mode=fb.LOCAL_ONLY),
        batching={"fragile": BatchingConfig(max_batch_size=2, max_queue_delay_us=30_000_000)},
    )
    try:
        one = np.ones((1, 4), np.float32)
        results = _concurrently([lambda: eng.infer("fragile", {"input": one})] * 2)
        assert all(getattr(r, "status", None) == 500 for r in results), results
        assert eng.metrics.version_failure.value("fragile", "1") == 2
        assert eng.stats.snapshot([("fragile", "1")])["model_stats"][0]["execution_count"] == 0
    finally:
        eng.close()


def test_close_runs_what_is_queued(model_dir: Path) -> None:
    reg = ModelRegistry()
    reg.put(load_model("cls", model_dir / "cls_v1.onnx", "1"))
    model = reg.get("cls")
    done: list[int] = []
    b = Batcher(
        "cls", BatchingConfig(8, 30_000_000), lambda es, t, s: done.append(len(es)), lambda es, e: None
    )
    f = b.submit(model, {"input": np.ones((1, 4), np.float32)}, Timing())
    b.close()
    assert f.result(10)["probs"].shape == (1, 3)
    b.join(10)
    assert done == [1]
    with pytest.raises(RuntimeError, match="closed"):
        b.submit(model, {"input": np.ones((1, 4), np.float32)}, Timing())


def test_agent_toml_batching_table(tmp_path: Path) -> None:
    from agent.config import load_agent_config
    from edgekit.settings import ConfigProblems

    base = '[agent]\ndevice = "d"\ninter_op_threads = 2\nmemory_arena = false\n[mqtt]\nenabled = false\n'
    good = tmp_path / "good.toml"
    good.write_text(
        base + "[models.cls]\nbatching = {max_queue_delay_us = 100, preferred_batch_sizes = [4]}\n"
    )
    cfg = load_agent_config(good)
    assert configs_from(cfg["models"]) == {"cls": BatchingConfig(32, 100, (4,))}
    assert (cfg["agent"]["inter_op_threads"], cfg["agent"]["memory_arena"]) == (2, False)
    bad = tmp_path / "bad.toml"
    bad.write_text(base + "[models.cls]\nbatching = {max_batch_size = 4, preferred_batch_sizes = [8]}\n")
    with pytest.raises(ConfigProblems) as e:
        load_agent_config(bad)
    assert any("models.cls.batching" in p and "outside 1..max_batch_size (4)" in p for p in e.value.problems)


def test_a_deadline_sends_a_queued_request_to_the_cloud_and_drops_it(model_dir: Path, cloud) -> None:
    """local-first with a local deadline: a request still queued (the worker is busy with a slow
    run) when its deadline comes is answered by the cloud (a real `edgekit serve`) and dropped
    from the queue: it never runs locally."""
    from agent.cloud import CloudClient

    reg = ModelRegistry()
    reg.put(load_model("slow", model_dir / "slow.onnx", "1"))  # milliseconds per run
    model = reg.get("slow")
    eng = Engine(
        reg,
        cloud=CloudClient(cloud.url),
        policies={"slow": fb.Policy(local_deadline_ms=1)},
        batching={"slow": BatchingConfig(max_batch_size=1, max_queue_delay_us=0)},
    )
    try:
        batcher = eng.batcher(model)
        assert batcher is not None
        x = np.array([[2.0, 1.0, 0.0, 0.0]], np.float32)
        busy = batcher.submit(model, {"input": x}, Timing())  # occupies the worker
        r = eng.infer("slow", {"input": x})
        assert (r.served_by, r.fallback_reason) == ("cloud", "deadline_exceeded")
        np.testing.assert_allclose(r.outputs["probs"], expected_probs(x), rtol=1e-5)
        busy.result(30)  # its accounting is done before its answer is handed over
        doc = eng.stats.snapshot([("slow", "1")])["model_stats"][0]
        assert (doc["inference_count"], doc["execution_count"]) == (1, 1)  # the dropped one never ran
        assert batcher.queued() == 0
    finally:
        eng.close()


def test_runtime_tuning_and_warm_up(model_dir: Path) -> None:
    from agent.models import RuntimeTuning

    warm = load_model("cls", model_dir / "cls_v1.onnx", "1")
    assert warm.last_compute_s is not None  # it ran once on zeros before being handed over
    tuned = RuntimeTuning(intra_op_threads=1, inter_op_threads=2, memory_arena=False, warmup=False)
    cold = load_model("cls", model_dir / "cls_v1.onnx", "1", tuning=tuned)
    assert cold.last_compute_s is None
    opts = cold.runtime.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 2)
    assert opts.enable_cpu_mem_arena is False
    assert cold.run({"input": np.ones((2, 4), np.float32)})["probs"].shape == (2, 3)
