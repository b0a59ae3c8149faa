"""How the ONNX Runtime adapter opens sessions: pool threads park instead of spinning between
runs (bench/agent.py --ab default,spin measured spinning slower on a shared 2-core box)."""

from __future__ import annotations

import numpy as np
import pytest

from targets.runtimes import onnxrt
from targets.runtimes.onnxrt import OnnxRuntime
from tests.targets.conftest import SAMPLE_EVAL, SAMPLE_ONNX

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("allow", [False, True])
def test_spinning_follows_the_switch(allow: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxrt, "ALLOW_SPINNING", allow)
    opts = OnnxRuntime(SAMPLE_ONNX).session.get_session_options()
    want = "1" if allow else "0"
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == want
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == want


def test_parked_threads_answer_like_spinning_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    with np.load(SAMPLE_EVAL) as z:
        x = np.asarray(z["input"][:8], np.float32)
    parked = OnnxRuntime(SAMPLE_ONNX, threads=2)
    monkeypatch.setattr(onnxrt, "ALLOW_SPINNING", True)
    spinning = OnnxRuntime(SAMPLE_ONNX, threads=2)
    feeds = {parked.inputs[0].name: x}
    a, b = parked.run(feeds), spinning.run(feeds)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_the_agent_ships_parked_threads() -> None:
    assert onnxrt.ALLOW_SPINNING is False
