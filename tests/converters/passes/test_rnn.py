"""unroll-recurrent: LSTM / GRU / RNN unrolled into per-timestep ops compute what onnxruntime's
recurrent kernels compute, for every direction, with and without initial states and outputs."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from onnx import helper

from converters.passes import REGISTRY
from tests.converters.passes.helpers import legalize_and_compare, model, tensor

T, B, IN, H = 5, 2, 3, 4
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent(kind: str, direction: str, with_init: bool, outs: tuple[int, ...], opset: int = 17, **attrs):
    rng = np.random.default_rng(zlib.crc32(repr((kind, direction, with_init, outs)).encode()))
    g, d = GATES[kind], 2 if direction == "bidirectional" else 1
    inits = {
        "W": rng.standard_normal((d, g * H, IN)).astype(np.float32) * 0.5,
        "R": rng.standard_normal((d, g * H, H)).astype(np.float32) * 0.5,
        "B": rng.standard_normal((d, 2 * g * H)).astype(np.float32) * 0.3,
    }
    ins = ["x", "W", "R", "B"]
    graph_in = [tensor("x", np.float32, [T, B, IN])]
    feeds = {"x": rng.standard_normal((T, B, IN)).astype(np.float32)}
    if with_init:
        states = ["h0", "c0"] if kind == "LSTM" else ["h0"]
        ins += ["", *states]  # no sequence_lens
        for s in states:
            graph_in.append(tensor(s, np.float32, [d, B, H]))
            feeds[s] = rng.standard_normal((d, B, H)).astype(np.float32)
    names = ["y", "yh", "yc"][: len(outs)]
    node_outs = [n if keep else "" for n, keep in zip(names, outs, strict=True)]
    shapes = {"y": [T, d, B, H], "yh": [d, B, H], "yc": [d, B, H]}
    m = model(
        [helper.make_node(kind, ins, node_outs, hidden_size=H, direction=direction, **attrs)],
        graph_in,
        [tensor(n, np.float32, shapes[n]) for n in node_outs if n],
        initializers=inits,
        opset=opset,
    )
    return m, feeds


CASES = [
    pytest.param(
        kind,
        direction,
        with_init,
        outs,
        extra,
        id=f"{kind}-{direction}-{'h0' if with_init else 'zeros'}-{''.join(map(str, outs))}{'-lbr' if extra else ''}",
    )
    for kind in GATES
    for direction in ("forward", "reverse", "bidirectional")
    for with_init in (False, True)
    for outs in ([(1, 1, 1), (1, 0, 1), (0, 1)] if kind == "LSTM" else [(1, 1), (0, 1)])
    for extra in ([{}, {"linear_before_reset": 1}] if kind == "GRU" else [{}])
]


@pytest.mark.parametrize("kind,direction,with_init,outs,extra", CASES)
def test_matches_onnxruntime(kind, direction, with_init, outs, extra) -> None:
    m, feeds = recurrent(kind, direction, with_init, outs, **extra)
    legalize_and_compare(m, "unroll-recurrent", feeds, rtol=1e-5, atol=1e-5, gone=[kind])


def test_opset_11_unsqueeze_takes_axes_as_attribute() -> None:
    m, feeds = recurrent("LSTM", "bidirectional", True, (1, 1, 1), opset=11)
    legalize_and_compare(m, "unroll-recurrent", feeds, rtol=1e-5, atol=1e-5, gone=["LSTM"])


@pytest.mark.parametrize(
    "change",
    ["clip", "activations", "dynamic_seq", "dynamic_weights"],
)
def test_outside_the_supported_set_is_left_alone(change: str) -> None:
    attrs = {"clip": {"clip": 2.0}, "activations": {"activations": ["Relu"]}}.get(change, {})
    m, _ = recurrent("RNN", "forward", True, (1, 1), **attrs)
    if change == "dynamic_seq":
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "T"
    if change == "dynamic_weights":
        w = m.graph.initializer[0]
        m.graph.input.append(helper.make_tensor_value_info("W", w.data_type, list(w.dims)))
        del m.graph.initializer[0]
    assert not REGISTRY["unroll-recurrent"].apply(m)
