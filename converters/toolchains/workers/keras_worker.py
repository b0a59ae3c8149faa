"""Keras / TensorFlow models -> ONNX with tf2onnx (tensorflow toolchain), plus a test-model maker.

Requests:
  {"action": "to_onnx", "source": .keras | .h5 | SavedModel dir, "out": model.onnx, "opset": 17}
      -> {"inputs": [...], "outputs": [...], "versions": {...}}
  {"action": "mobilenetv2", "out": x.keras, "input_shape": [96, 96, 3], "classes": 10, "seed": 0}
      -> {"path": ..., "params": int}   (weights=None: random init, never downloads)
      optional "train_npz": .npz with x (N, *input_shape) float32 and y (N,) int labels, "epochs": 3:
      a short fit on that data (then BatchNorm re-estimated on it) for a well-conditioned model.
      Random-weight MobileNetV2 is chaotic: any small perturbation (int8 rounding, 1% input noise)
      changes its logits as much as a different input would, so quantization parity needs training.

Keras 3 models are traced through a tf.function with the model's own input signature
(tf2onnx.convert.from_keras expects the legacy tf.keras graph and fails on Keras 3 models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _worker import WorkerError, captured, main, tail, versions


def _load(source: Path) -> tuple[Any, list[Any], list[str]]:
    """(callable, input TensorSpecs, output names) for a Keras file or a SavedModel dir."""
    import tensorflow as tf

    if source.is_dir():
        loaded = tf.saved_model.load(str(source))
        if "serving_default" not in getattr(loaded, "signatures", {}):
            raise WorkerError("bad_input", f"SavedModel {source} has no serving_default signature")
        fn = loaded.signatures["serving_default"]
        _, kw = fn.structured_input_signature
        specs = [tf.TensorSpec(s.shape, s.dtype, name=name) for name, s in kw.items()]
        out_names = list(fn.structured_outputs)

        def call(*args: Any) -> Any:
            res = fn(**{s.name: a for s, a in zip(specs, args, strict=True)})
            return [res[k] for k in out_names]

        return call, specs, out_names

    import keras

    model = keras.models.load_model(str(source), compile=False)
    specs = []
    for i, t in enumerate(model.inputs):
        name = (getattr(t, "name", None) or f"input_{i}").split(":")[0]
        specs.append(tf.TensorSpec(t.shape, t.dtype or tf.float32, name=name))
    n_out = len(model.outputs)
    # Keras 3 tensors are named keras_tensor_<n>; the output layers' names are what users know.
    out_names = [str(n).replace("/", "_") for n in (getattr(model, "output_names", None) or [])]
    if len(set(out_names)) != n_out:
        out_names = [f"output_{i}" for i in range(n_out)]

    def call(*args: Any) -> Any:
        y = model(list(args) if len(args) > 1 else args[0], training=False)
        return list(y) if isinstance(y, list | tuple) else [y]

    return call, specs, out_names


def to_onnx(req: dict[str, Any]) -> dict[str, Any]:
    import tensorflow as tf
    import tf2onnx

    source = Path(req["source"])
    if not source.exists():
        raise WorkerError("bad_input", f"{source} does not exist")
    try:
        call, specs, out_names = _load(source)
    except WorkerError:
        raise
    except Exception as e:
        raise WorkerError("bad_input", f"cannot load {source.name} as a Keras/TensorFlow model: {e}") from e

    @tf.function(input_signature=specs)
    def serving(*args: Any) -> dict[str, Any]:
        return dict(zip(out_names, call(*args), strict=True))

    with captured() as log:
        try:
            model_proto, _ = tf2onnx.convert.from_function(
                serving, input_signature=specs, opset=int(req.get("opset", 17)), output_path=req["out"]
            )
        except Exception as e:
            raise WorkerError(
                "backend_crash", f"tf2onnx failed: {type(e).__name__}: {e}"[:2000], log=tail(log.getvalue())
            ) from e
    return {
        "inputs": [i.name for i in model_proto.graph.input],
        "outputs": [o.name for o in model_proto.graph.output],
        "versions": versions("tf2onnx", "tensorflow", "keras"),
    }


def mobilenetv2(req: dict[str, Any]) -> dict[str, Any]:
    import keras

    keras.utils.set_random_seed(int(req.get("seed", 0)))
    model = keras.applications.MobileNetV2(
        weights=None,  # random init: tests must not download ImageNet weights
        input_shape=tuple(req.get("input_shape", (96, 96, 3))),
        classes=int(req.get("classes", 10)),
        alpha=float(req.get("alpha", 1.0)),
        classifier_activation=req.get("classifier_activation"),  # None: logits, better for parity
    )
    reply: dict[str, Any] = {}
    if req.get("train_npz"):
        reply = _train(model, req["train_npz"], int(req.get("epochs", 3)))
    elif req.get("recalibrate_bn", True):
        _recalibrate_batchnorm(model, req.get("input_shape", (96, 96, 3)), int(req.get("seed", 0)))
    model.save(req["out"])
    return {"path": req["out"], "params": int(model.count_params()), **reply}


def _train(model: Any, npz: str, epochs: int) -> dict[str, Any]:
    """Fit on the given data (Adam 1e-3, batch 64), then set BatchNorm statistics from it."""
    import keras
    import numpy as np

    data = np.load(npz)
    x, y = np.asarray(data["x"], dtype="float32"), np.asarray(data["y"]).astype("int64")
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    hist = model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    # MobileNetV2's BN momentum is 0.999: a few epochs leave the moving statistics far from the
    # data's, so store the statistics of (part of) the training data, as _recalibrate_batchnorm does.
    _set_bn_stats(model, x[:256])
    return {"train_accuracy": float(hist.history["accuracy"][-1])}


def _recalibrate_batchnorm(model: Any, input_shape: Any, seed: int) -> None:
    """Set every BatchNorm's moving statistics to the batch statistics of random images.

    With random weights and default moving stats (mean 0, var 1) activations shrink layer after
    layer and MobileNetV2's logits come out ~1e-12: useless for parity or quantization. One
    training-mode pass with momentum 0 stores each layer's actual statistics, so the network is
    normalized like a trained one (what BN re-estimation does after pruning/quantization).
    """
    import numpy as np

    _set_bn_stats(model, np.random.default_rng(seed).uniform(-1, 1, (32, *input_shape)).astype("float32"))


def _set_bn_stats(model: Any, x: Any) -> None:
    """One training-mode pass with momentum 0: every BatchNorm stores the batch statistics of x."""
    import keras

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, m in zip(bns, saved, strict=True):
        layer.momentum = m


def handle(req: dict[str, Any]) -> dict[str, Any]:
    actions = {"to_onnx": to_onnx, "mobilenetv2": mobilenetv2}
    action = req.get("action", "to_onnx")
    if action not in actions:
        raise WorkerError("bad_input", f"unknown action {action!r}; one of {sorted(actions)}")
    return actions[action](req)


if __name__ == "__main__":
    main(handle)
