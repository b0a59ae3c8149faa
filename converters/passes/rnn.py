"""unroll-recurrent: LSTM / GRU / RNN nodes as their per-timestep equations.

onnx2torch has no LSTM, GRU or RNN converter, so the Core ML route had no path for recurrent
models (a CRNN text recognizer's BiLSTM, a streaming GRU). With a static sequence length (after
`--input-shape` pins it) and constant weights, the ONNX operator definitions unroll into MatMul,
Add, Mul, Sigmoid and Tanh, which every backend converts. The input projection of all timesteps is
one MatMul per gate; the recurrence is two small MatMuls per gate and step.

Supported: forward / reverse / bidirectional, layout 0 (sequence first), initial states as inputs or absent,
GRU with either `linear_before_reset`, the default activations, no `clip`, no peepholes, LSTM
without `input_forget`, and `sequence_lens` absent or a constant equal to the full length.
Anything else is left for the backend to judge.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converters.passes._rewrite import infer_shapes, opset_version
from converters.passes.constants import fold_constants
from converters.passes.registry import register

# gate order in W / R / B, per the ONNX operator definitions
_GATES = {"LSTM": ("i", "o", "f", "c"), "GRU": ("z", "r", "h"), "RNN": ("i",)}
_DEFAULT_ACTS = {
    "LSTM": ["Sigmoid", "Tanh", "Tanh"],
    "GRU": ["Sigmoid", "Tanh"],
    "RNN": ["Tanh"],
}


class _Skip(Exception):
    """This node is outside what the unrolling supports: leave it."""


@dataclass
class _Builder:
    """Appends nodes and initializers with unique names derived from the recurrent node's."""

    prefix: str
    dtype: np.dtype
    opset: int
    nodes: list[onnx.NodeProto]
    inits: list[onnx.TensorProto]
    _n: itertools.count

    def name(self, what: str) -> str:
        return f"{self.prefix}__{what}_{next(self._n)}"

    def const(self, value: np.ndarray, what: str, dtype: np.dtype | None = None) -> str:
        n = self.name(what)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype or self.dtype), n))
        return n

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        if self.opset >= 13:  # axes became an input in opset 13
            return self.op("Unsqueeze", [x, self.const(np.array(axes, np.int64), "axes", np.int64)])
        return self.op("Unsqueeze", [x], axes=axes)

    def op(
        self, op_type: str, inputs: list[str], what: str | None = None, out: str | None = None, **attrs
    ) -> str:
        o = out or self.name(what or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [o], name=self.name(op_type), **attrs))
        return o


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _input(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i and node.input[i] else ""


def _check(node: onnx.NodeProto, attrs: dict, consts: dict[str, np.ndarray], seq_len: int) -> None:
    acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    dirs = 2 if attrs.get("direction", b"forward") in (b"bidirectional", "bidirectional") else 1
    if acts and [a.lower() for a in acts] != [a.lower() for a in _DEFAULT_ACTS[node.op_type] * dirs]:
        raise _Skip("non-default activations")
    if "clip" in attrs or attrs.get("input_forget", 0):
        raise _Skip("clip / input_forget")
    for i in (1, 2):
        if _input(node, i) not in consts:
            raise _Skip("weights are not constants")
    if _input(node, 3) and _input(node, 3) not in consts:
        raise _Skip("bias is not a constant")
    lens = _input(node, 4)
    if lens and (lens not in consts or not np.all(consts[lens] == seq_len)):
        raise _Skip("sequence_lens shorter than the sequence")
    if node.op_type == "LSTM" and _input(node, 7) and np.any(consts.get(_input(node, 7), 1) != 0):
        raise _Skip("peepholes")


def _unroll(
    node: onnx.NodeProto, x_shape: list, dtype: np.dtype, consts: dict[str, np.ndarray], b: _Builder
) -> None:
    kind = node.op_type
    attrs = _attrs(node)
    if int(attrs.get("layout", 0)):
        # batch-first: onnxruntime refuses it too, so there would be no reference to validate against
        raise _Skip("layout 1")
    seq_len, batch = x_shape[0], x_shape[1]
    if not isinstance(seq_len, int) or seq_len <= 0:
        raise _Skip("dynamic sequence length")
    _check(node, attrs, consts, seq_len)
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    gates = _GATES[kind]
    w, r = consts[_input(node, 1)], consts[_input(node, 2)]
    hidden = r.shape[-1]
    bias = (
        consts[_input(node, 3)] if _input(node, 3) else np.zeros((len(dirs), 2 * len(gates) * hidden), dtype)
    )
    lbr = kind == "GRU" and int(attrs.get("linear_before_reset", 0))

    x = _input(node, 0)
    h_init, c_init = _input(node, 5), _input(node, 6) if kind == "LSTM" else ""
    if (not h_init or (kind == "LSTM" and not c_init)) and not isinstance(batch, int):
        raise _Skip("no initial state and a dynamic batch")

    ys, hs, cs = [], [], []
    steps = [b.const(np.array(t, np.int64), f"t{t}", np.int64) for t in range(seq_len)]
    for d, dname in enumerate(dirs):

        def gate_slice(m: np.ndarray, g: int, d: int = d) -> np.ndarray:
            return m[d, g * hidden : (g + 1) * hidden]

        wb, rb = bias[d, : len(gates) * hidden], bias[d, len(gates) * hidden :]
        # input projection for every timestep at once: [seq, batch, hidden] per gate
        xw = {}
        for g, gate in enumerate(gates):
            wt = b.const(gate_slice(w, g).T, f"W{gate}T")
            add_rb = not (lbr and gate == "h")
            bsum = wb[g * hidden : (g + 1) * hidden] + (rb[g * hidden : (g + 1) * hidden] if add_rb else 0)
            xw[gate] = b.op("Add", [b.op("MatMul", [x, wt]), b.const(bsum, f"b{gate}")], f"xw{gate}")
        rt = {gate: b.const(gate_slice(r, g).T, f"R{gate}T") for g, gate in enumerate(gates)}
        zeros = None if h_init and (kind != "LSTM" or c_init) else np.zeros((batch, hidden), dtype)
        h = (
            b.op("Gather", [h_init, b.const(np.array(d, np.int64), "d", np.int64)], "h", axis=0)
            if h_init
            else b.const(zeros, "h0")
        )
        c = None
        if kind == "LSTM":
            c = (
                b.op("Gather", [c_init, b.const(np.array(d, np.int64), "d", np.int64)], "c", axis=0)
                if c_init
                else b.const(zeros, "c0")
            )
        out_at: dict[int, str] = {}
        order = range(seq_len) if dname == "forward" else range(seq_len - 1, -1, -1)
        for t in order:
            xt = {gate: b.op("Gather", [xw[gate], steps[t]], f"x{gate}", axis=0) for gate in gates}

            def pre(gate: str, hh: str = h, xt=xt, rt=rt) -> str:
                return b.op("Add", [xt[gate], b.op("MatMul", [hh, rt[gate]])])

            if kind == "RNN":
                h = b.op("Tanh", [pre("i")], "h")
            elif kind == "LSTM":
                i = b.op("Sigmoid", [pre("i")])
                o = b.op("Sigmoid", [pre("o")])
                f = b.op("Sigmoid", [pre("f")])
                cc = b.op("Tanh", [pre("c")])
                c = b.op("Add", [b.op("Mul", [f, c]), b.op("Mul", [i, cc])], "c")
                h = b.op("Mul", [o, b.op("Tanh", [c])], "h")
            else:  # GRU
                z = b.op("Sigmoid", [pre("z")])
                rr = b.op("Sigmoid", [pre("r")])
                if lbr:
                    rh = b.op("Add", [b.op("MatMul", [h, rt["h"]]), b.const(rb[2 * hidden :], "Rbh")])
                    hh = b.op("Tanh", [b.op("Add", [xt["h"], b.op("Mul", [rr, rh])])])
                else:
                    hh = b.op("Tanh", [pre("h", b.op("Mul", [rr, h]))])
                one = b.const(np.array(1, dtype), "one")
                h = b.op("Add", [b.op("Mul", [b.op("Sub", [one, z]), hh]), b.op("Mul", [z, h])], "h")
            out_at[t] = h
        ys.append(b.op("Concat", [b.unsqueeze(out_at[t], [0, 1]) for t in range(seq_len)], "y", axis=0))
        hs.append(b.unsqueeze(h, [0]))
        if c is not None:
            cs.append(b.unsqueeze(c, [0]))

    outs = list(node.output) + [""] * (3 - len(node.output))
    y_name, yh_name, yc_name = outs[0], outs[1], outs[2] if kind == "LSTM" else ""
    if y_name:  # [seq, dirs, batch, hidden]
        b.op("Concat", ys, out=y_name, axis=1)
    for name, parts in ((yh_name, hs), (yc_name, cs)):
        if name:  # [dirs, batch, hidden]
            b.op("Concat", parts, out=name, axis=0)


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            a = {x.name: x for x in n.attribute}
            if "value" in a:
                out[n.output[0]] = numpy_helper.to_array(a["value"].t)
    return out


@register("unroll-recurrent", {"coreml"})
def unroll_recurrent(model: onnx.ModelProto) -> bool:
    """LSTM / GRU / RNN with a static sequence length and constant weights -> unrolled steps."""
    g = model.graph
    if not any(n.op_type in _GATES and n.domain in ("", "ai.onnx") for n in g.node):
        return False
    # the sequence length often comes through shape arithmetic (a CNN's width, transposed) that
    # only constant folding makes static
    folded = fold_constants(model)
    g = model.graph
    typed = infer_shapes(model).graph
    info = {
        vi.name: vi.type.tensor_type for vi in list(typed.input) + list(typed.value_info) + list(typed.output)
    }
    consts = _constants(g)
    new_nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    changed = False
    counter = itertools.count()
    for node in g.node:
        t = info.get(node.input[0]) if node.op_type in _GATES and node.domain in ("", "ai.onnx") else None
        if t is None or not t.HasField("shape"):
            new_nodes.append(node)
            continue
        shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        b = _Builder(node.name or node.op_type, np.dtype(dtype), opset_version(model), [], [], counter)
        try:
            _unroll(node, shape, dtype, consts, b)
        except _Skip:
            new_nodes.append(node)
            continue
        new_nodes.extend(b.nodes)
        inits.extend(b.inits)
        changed = True
    if changed:
        del g.node[:]
        g.node.extend(new_nodes)
        g.initializer.extend(inits)
    return changed or folded
