"""The model variants the scenarios ship, made from the bundled digits CNN: pure ONNX in, ONNX out.

- `slow_variant`: the same predictions, plus a branch of costly convolutions whose result is
  multiplied by zero and added to the logits. Nothing can fold it away (it depends on the
  input), so every request pays for it: a release that installs and answers correctly, only slower.
- `finetuned`: the same architecture with only its last layer (head.3, a Gemm) retrained on
  labelled digits by full-batch gradient descent from the shipped weights. Every other byte of
  the file is unchanged, which is what makes a binary delta small.
- `perturbed_head`: the last layer's weights with noise added: a release that installs and
  answers, but whose top-1 disagrees with the source's on a fifth to a quarter of the digits.
All are deterministic (fixed seeds, no threads involved in the arithmetic that matters).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
SOURCE = SAMPLES_DIR / "digits_cnn.onnx"
HEAD_W, HEAD_B = "head.3.weight", "head.3.bias"  # the last Gemm: logits = h @ W.T + b
PENULTIMATE = "/head/head.2/Relu_output_0"  # its input: 64 features per sample


def slow_variant(src: Path, dest: Path, channels: int = 128, layers: int = 64, seed: int = 0) -> Path:
    """`src` plus `layers` 3x3 convolutions of `channels` channels over the 8x8 input whose sum,
    times zero, is added to the logits: same outputs, ~channels^2 * 9 * 64 * layers more MACs."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    (out,) = m.graph.output
    final = next(n for n in m.graph.node if out.name in n.output)
    raw = f"{out.name}_before_ballast"
    final.output[list(final.output).index(out.name)] = raw
    rng = np.random.default_rng(seed)
    # Weights scaled to keep activations ~N(0, 1) through the chain: never inf, so never NaN * 0.
    w_in = (rng.standard_normal((channels, 1, 3, 3)) / 3.0).astype(np.float32)
    w = (rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9.0 * channels)).astype(np.float32)
    m.graph.initializer.extend(
        [
            numpy_helper.from_array(w_in, "slow.w_in"),
            numpy_helper.from_array(w, "slow.w"),
            numpy_helper.from_array(np.array(0.0, np.float32), "slow.zero"),
        ]
    )
    nodes = [helper.make_node("Conv", [m.graph.input[0].name, "slow.w_in"], ["slow.h0"], pads=[1, 1, 1, 1])]
    for i in range(layers):  # one weight tensor reused: the file grows by one layer, the work by all
        nodes.append(
            helper.make_node("Conv", [f"slow.h{i}", "slow.w"], [f"slow.h{i + 1}"], pads=[1, 1, 1, 1])
        )
    nodes += [
        helper.make_node("ReduceSum", [f"slow.h{layers}"], ["slow.sum"], keepdims=0),
        helper.make_node("Mul", ["slow.sum", "slow.zero"], ["slow.nothing"]),
        helper.make_node("Add", [raw, "slow.nothing"], [out.name]),
    ]
    m.graph.node.extend(nodes)
    onnx.checker.check_model(m)
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(dest))
    return dest


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def retrain_head(
    feats: np.ndarray, labels: np.ndarray, w: np.ndarray, b: np.ndarray, steps: int = 300, lr: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression on the penultimate features, from the shipped (w, b): full-batch
    gradient descent with a little L2, deterministic."""
    w, b = w.astype(np.float64).copy(), b.astype(np.float64).copy()
    onehot = np.eye(w.shape[0])[labels]
    scale = max(float(np.abs(feats).max()), 1e-6)
    x = feats / scale  # the step size then does not depend on the features' range
    w *= scale  # ...and (w * scale) @ (x) == w @ feats: the starting point is the shipped layer
    for _ in range(steps):
        p = _softmax(x @ w.T + b)
        g = (p - onehot) / len(x)
        w -= lr * (g.T @ x + 1e-4 * w)
        b -= lr * g.sum(axis=0)
    return (w / scale).astype(np.float32), b.astype(np.float32)


def finetuned(src: Path, dest: Path, inputs: np.ndarray, labels: np.ndarray) -> Path:
    """`src` with head.3 retrained on (inputs, labels); every other tensor byte-identical."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    m = onnx.load(str(src))
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    probe.graph.output.append(onnx.ValueInfoProto(name=PENULTIMATE))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feats = sess.run([PENULTIMATE], {m.graph.input[0].name: inputs.astype(np.float32)})[0]
    inits = {t.name: t for t in m.graph.initializer}
    w, b = retrain_head(
        feats, labels, numpy_helper.to_array(inits[HEAD_W]), numpy_helper.to_array(inits[HEAD_B])
    )
    inits[HEAD_W].CopyFrom(numpy_helper.from_array(w, HEAD_W))
    inits[HEAD_B].CopyFrom(numpy_helper.from_array(b, HEAD_B))
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(dest))
    return dest


def perturbed_head(src: Path, dest: Path, scale: float = 1.0, seed: int = 0) -> Path:
    """`src` with Gaussian noise of `scale` times the weights' own std added to head.3's weights:
    the same architecture and size, installs and answers, but disagrees with `src` on part of
    the inputs (scale 1.0, seed 0: top-1 agrees on ~77% of the bundled eval digits)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    inits = {t.name: t for t in m.graph.initializer}
    w = numpy_helper.to_array(inits[HEAD_W])
    noise = np.random.default_rng(seed).standard_normal(w.shape) * scale * float(w.std())
    inits[HEAD_W].CopyFrom(numpy_helper.from_array((w + noise).astype(np.float32), HEAD_W))
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(dest))
    return dest


def training_split(n_train: int = 180) -> tuple[np.ndarray, np.ndarray]:
    """The labelled digits the fine-tune learns from: the first `n_train` of the bundled eval set
    (the only labelled digits edgekit ships; the report's top-1 is then partly in-sample)."""
    ev = np.load(SAMPLES_DIR / "digits_eval.npz")
    return ev["input"][:n_train], ev["labels"][:n_train]
