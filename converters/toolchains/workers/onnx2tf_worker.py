"""ONNX -> TensorFlow SavedModel + .tflite files, with onnx2tf, in one run (tensorflow toolchain).

Request: {"model": path, "out_dir": dir, "precisions": [float32|float16|dynamic_range|full_integer],
          "layout": "nchw"|"nhwc", "calibration_npz": path|null}
Reply:   {"files": {precision: path}, "saved_model": dir, "output_names": {precision: [...]},
          "inputs": [...], "outputs": [...], "versions": {...}, "convert_seconds": float}

Runs inside the toolchain interpreter: stdlib + the environment's packages only.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from _worker import WorkerError, captured, main, tail, versions

# onnx2tf's file name suffix for each precision we ask for. It also writes integer_quant (float
# I/O) and *_with_int16_act files when integer quantization is on; we do not ship those (the int16
# I/O variant is not even correct through the LiteRT Python API).
SUFFIX = {
    "float32": "_float32.tflite",
    "float16": "_float16.tflite",
    "dynamic_range": "_dynamic_range_quant.tflite",
    "full_integer": "_full_integer_quant.tflite",
}


def _unsupported_ops(model: Any) -> list[tuple[str, str]]:
    """(op, node) for nodes onnx2tf has no converter module for; it imports `onnx2tf.ops.<OpType>`."""
    missing = []
    for node in model.graph.node:
        if importlib.util.find_spec(f"onnx2tf.ops.{node.op_type}") is None:
            missing.append((node.op_type, node.name or f"<unnamed {node.op_type}>"))
    return missing


def _offline_sample_images(seed: int = 0) -> Any:
    """Stand-in for onnx2tf's download_test_image_data (MS-COCO crops fetched from GitHub).

    onnx2tf fetches them for its internal ONNX dummy inference whenever every input looks like a
    small-batch RGB image, and for int8 calibration when no data is given. Conversion must never
    touch the network, and we always pass our own calibration data for int8; for the dummy
    inference, deterministic pseudo-images in the same shape/range are enough.
    """
    import numpy as np

    return np.random.default_rng(seed).random((20, 128, 128, 3), dtype=np.float32)


def _input_layouts(model: Any, inputs: list[str], given: dict[str, str | None]) -> dict[str, str | None]:
    """NCHW / NHWC / None per input: the model card's word, else guessed like edgekit's card does."""
    out: dict[str, str | None] = {}
    for vi in model.graph.input:
        if vi.name not in inputs:
            continue
        if given.get(vi.name):
            out[vi.name] = str(given[vi.name]).upper()
            continue
        dims = [d.dim_value if d.dim_value > 0 else None for d in vi.type.tensor_type.shape.dim]
        guess = None
        if len(dims) == 4:
            c1, c3 = dims[1], dims[3]
            if c1 in (1, 3, 4) and c3 not in (1, 3, 4):
                guess = "NCHW"
            elif c3 in (1, 3, 4):
                guess = "NHWC"
            else:
                guess = "NCHW"
        out[vi.name] = guess
    return out


RECURRENT = {"LSTM", "GRU", "RNN"}


def _tf_name(name: str) -> str:
    return name.replace(":", "__")


def _ranks(model: Any) -> dict[str, int]:
    return {vi.name: len(vi.type.tensor_type.shape.dim) for vi in model.graph.input}


def _rows(x: Any, rank: int) -> Any:
    """A stack of whole inputs (edgekit's data convention, rank + 1 dims) as rows of one batch;
    data already in rows (the input's own rank) as is."""
    return x.reshape(-1, *x.shape[2:]) if x.ndim == rank + 1 and x.ndim >= 2 else x


def _calibration_files(
    npz_path: str, inputs: list[str], moved: list[str], folder: Path, ranks: dict[str, int]
) -> list[list[Any]]:
    import numpy as np

    data = np.load(npz_path)
    missing = [n for n in inputs if n not in data.files]
    if missing:
        raise WorkerError("bad_input", f"calibration data lacks inputs {missing}; has {data.files}")
    params = []
    for name in inputs:
        # onnx2tf reads axis 0 as its batch: concatenate a stack of whole inputs along it
        x = _rows(np.asarray(data[name], dtype=np.float32), ranks[name])
        if name in moved:  # onnx2tf moved this input channels-last
            x = np.moveaxis(x, 1, -1)
        path = folder / f"calib_{len(params)}.npy"
        np.save(path, x)
        # onnx2tf feeds (x - mean) / std; our data is already what the model expects.
        params.append([_tf_name(name), str(path), 0.0, 1.0])
    return params


def _output_names(tflite: Path, onnx_outputs: list[str]) -> list[str]:
    """ONNX output names in the order LiteRT's get_output_details() lists the file's outputs.

    Quantized files rename outputs (`output_0`, `Identity`); the signature, when present, maps
    names to tensor indices, and `output_k` is the k-th ONNX output.
    """
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tflite))
    details = it.get_output_details()
    sigs = it._get_full_signature_list() or {}
    sig = next(iter(sigs.values()), None) if sigs else None
    if sig and len(sig.get("outputs", {})) == len(details) == len(onnx_outputs):
        by_index = {idx: name for name, idx in sig["outputs"].items()}
        names = []
        for d in details:
            sname = by_index.get(d["index"], "")
            m = re.fullmatch(r"output_(\d+)", sname)
            if sname in onnx_outputs:
                names.append(sname)
            elif m and int(m.group(1)) < len(onnx_outputs):
                names.append(onnx_outputs[int(m.group(1))])
            else:
                break
        else:
            return names
    # No usable signature (dynamic-range files have none): onnx2tf keeps ONNX output order.
    return list(onnx_outputs)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _conversion_error(exc: BaseException, log: str, model: Any) -> WorkerError:
    node_name = getattr(exc, "onnx_op_name", None)
    if node_name is None:
        m = re.findall(r"onnx_op_name: (\S+)", log)
        node_name = m[-1] if m else None
    op = None
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("onnx2tf.ops."):
        op = exc.name.rsplit(".", 1)[-1]
    if node_name is not None:
        clean = re.sub("^wa/", "/", node_name).replace("__", ":")
        for node in model.graph.node:
            if node.name in (node_name, clean):
                op, node_name = node.op_type, node.name
                break
    if op is not None:
        detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ModuleNotFoundError) else ""
        msg = f"onnx2tf failed on it: {detail}" if detail else "onnx2tf has no converter for it"
        return WorkerError("unsupported_op", msg, op=op, node=node_name, log=tail(log))
    reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SystemExit) else f"exit code {exc.code}"
    errors = [_ANSI.sub("", ln) for ln in log.splitlines() if "ERROR" in ln]
    return WorkerError(
        "backend_crash", f"onnx2tf failed ({reason}) {' | '.join(errors[-3:])}".strip(), log=tail(log)
    )


def _convert(o2t: Any, kwargs: dict[str, Any], out: Path, model: Any, src: Path, original: str) -> None:
    shutil.copyfile(original, src)  # a fresh copy each attempt: onnx2tf rewrote the last one
    cwd = os.getcwd()
    os.chdir(out)  # onnx2tf also looks for / leaves files in the working directory
    try:
        with captured() as log:
            try:
                o2t.convert(**kwargs)
            except (Exception, SystemExit) as e:
                raise _conversion_error(e, log.getvalue(), model) from e
    finally:
        os.chdir(cwd)


def _probe_inputs(npz: str | None, model: Any, inputs: list[str], batchable: bool) -> dict[str, Any]:
    """Real samples (the validation data, a stack of whole inputs): two concatenated along the
    batch axis when the model has one, else the first one; seeded noise if there is no data."""
    import numpy as np

    if npz:
        data = np.load(npz)
        dims = {vi.name: vi.type.tensor_type.shape.dim for vi in model.graph.input}
        # a batch the user pinned (--input-shape x:1,...) is no longer a batch axis here
        batchable = batchable and all(n in dims and dims[n] and not dims[n][0].dim_value for n in inputs)
        ranks = _ranks(model)
        if all(n in data.files and len(data[n]) >= 1 for n in inputs):
            stacked = {n: data[n] if data[n].ndim == ranks[n] + 1 else data[n][:, None] for n in inputs}
            if batchable and all(len(stacked[n]) >= 2 for n in inputs):
                return {n: np.concatenate(list(stacked[n][:2])) for n in inputs}
            return {n: np.asarray(stacked[n][0]) for n in inputs}
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inputs:
            dims = [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
            feeds[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def _signature_key(name: str, keys: list[str], position: int) -> str:
    """The SavedModel signature's key for ONNX input `name` (onnx2tf rewrites `:` and `.`)."""
    for cand in (name, name.replace(":", "__"), re.sub(r"[^A-Za-z0-9_]", "_", name)):
        if cand in keys:
            return cand
    return keys[position] if position < len(keys) else name


def _layout_perm(y: Any, r: Any) -> list[int] | None:
    import itertools

    import numpy as np

    n = y.ndim
    first = [0, n - 1, *range(1, n - 1)]  # channels-last back to channels-first, the usual case
    for perm in [first, *itertools.permutations(range(n))] if n <= 5 else [first]:
        t = np.transpose(y, perm)
        if t.shape == r.shape and np.allclose(
            t.astype(np.float64), r.astype(np.float64), rtol=1e-3, atol=1e-4
        ):
            return list(perm)
    return None


def _probe(saved: Path, model: Any, feeds: dict[str, Any], moved: list[str]) -> dict[str, Any]:
    """Run the SavedModel and onnxruntime on the same batch; did onnx2tf keep the numbers (and batch)?"""
    import numpy as np
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        ref = sess.run(None, feeds)
    except Exception as e:  # ORT cannot run it (custom ops): nothing to compare with
        return {"ok": True, "skipped": f"onnxruntime cannot run the model: {e}"[:300]}
    import tensorflow as tf

    fn = tf.saved_model.load(str(saved)).signatures["serving_default"]
    keys = list(fn.structured_input_signature[1])
    tf_feeds = {}
    for i, (name, x) in enumerate(feeds.items()):
        if name in moved:
            x = np.moveaxis(x, 1, -1)
        tf_feeds[_signature_key(name, keys, i)] = tf.constant(x)
    try:
        got = fn(**tf_feeds)
    except Exception as e:
        return {"ok": False, "batch": int(next(iter(feeds.values())).shape[0]), "error": str(e)[:300]}
    keys = list(got)
    outs = [o.name for o in model.graph.output]
    worst, perms = 0.0, {}
    for i, name in enumerate(outs):
        key = name if name in got else f"output_{i}" if f"output_{i}" in got else keys[i]
        y, r = got[key].numpy(), ref[i]
        if y.shape != r.shape and y.ndim == r.ndim and y.ndim >= 2:
            # onnx2tf leaves outputs of channels-last computations channels-last ([N,C,W] comes out
            # [N,W,C]) and may move unit axes: record the transpose that gives the ONNX layout back
            # (the one whose values match); runtimes apply it
            perm = _layout_perm(y, r)
            if perm is not None:
                y = np.transpose(y, perm)
                perms[name] = perm
        if y.shape != r.shape:
            return {"ok": False, "error": f"output {name}: shape {list(y.shape)} vs onnx {list(r.shape)}"}
        y, r = np.asarray(y, np.float64), np.asarray(r, np.float64)  # bool outputs cannot subtract
        if y.size:
            worst = max(worst, float(np.max(np.abs(y - r)) / (1.0 + np.max(np.abs(r)))))
    batch = int(ref[0].shape[0]) if ref[0].ndim else 1
    return {"ok": worst < 1e-3, "batch": batch, "rel_err": worst, "output_perms": perms}


def _lower_ir_version(model: Any) -> bool:
    """A model saved by a newer onnx (IR 12+) than this environment's onnxruntime reads: the IR
    version only gates file features, so lower it to the oldest that carries the model's opset."""
    import onnx

    ops = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)
    need = min(
        (ir for _rel, ir, opset, *_ in onnx.helper.VERSION_TABLE if opset >= ops), default=model.ir_version
    )
    if model.ir_version > max(need, 10):
        model.ir_version = max(need, 10)
        return True
    return False


def handle(req: dict[str, Any]) -> dict[str, Any]:
    import onnx

    out = Path(req["out_dir"]).resolve()  # onnx2tf runs with this as its working directory
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    src = out / "model.onnx"
    shutil.copyfile(req["model"], src)  # onnx2tf rewrites its input file in place
    model = onnx.load(str(src))
    if _lower_ir_version(model):
        onnx.save(model, str(src))
        req = {**req, "model": str(out / "model.ir.onnx")}
        onnx.save(model, req["model"])
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    outputs = [o.name for o in model.graph.output]
    # Fail fast, before minutes of conversion; the same case is caught again below if it slips by.
    missing = _unsupported_ops(model) if req.get("precheck", True) else []
    if missing:
        op, node = missing[0]
        others = sorted({o for o, _ in missing[1:]})
        more = f"; {len(missing) - 1} more unsupported node(s): {others}" if len(missing) > 1 else ""
        raise WorkerError("unsupported_op", f"onnx2tf has no converter for it{more}", op=op, node=node)

    precisions = set(req["precisions"]) | {"float32", "float16"}  # onnx2tf always writes these two
    layout = req.get("layout", "nchw")
    saved = out / "saved_model"
    kwargs: dict[str, Any] = {
        "input_onnx_file_path": str(src),
        "output_folder_path": str(saved),
        "non_verbose": True,
        "copy_onnx_input_output_names_to_tflite": True,
    }
    layouts = _input_layouts(model, inputs, req.get("input_layouts") or {})
    # Which inputs onnx2tf should move channels-last: only channels-first images, only if asked.
    moved = [n for n in inputs if layout == "nhwc" and layouts[n] == "NCHW"]
    nhwc_in = [n for n in inputs if layouts[n] == "NHWC"]
    keep = [n for n in inputs if n not in moved and n not in nhwc_in]
    # onnx2tf spells `:` as `__` in the names these options take (`onnx::Sub_0` -> `onnx____Sub_0`);
    # an unmatched name is silently ignored and the input turned NHWC
    if nhwc_in:  # already channels-last (Keras/TF sources): onnx2tf must not transpose it again
        kwargs["keep_nwc_or_nhwc_or_ndhwc_input_names"] = [_tf_name(n) for n in nhwc_in]
    if keep:
        kwargs["keep_shape_absolutely_input_names"] = [_tf_name(n) for n in keep]
    if any(node.op_type in RECURRENT for node in model.graph.node):
        # onnx2tf turns LSTM/GRU/RNN into TensorList loops (Flex ops LiteRT cannot run, and TF's
        # int8 calibrator crashes on them); unrolled over the pinned sequence they are builtins
        kwargs["enable_rnn_unroll"] = True
    if "dynamic_range" in precisions:
        kwargs["output_dynamic_range_quantized_tflite"] = True
    if "full_integer" in precisions:
        if not req.get("calibration_npz"):
            raise WorkerError("bad_input", "full integer quantization needs calibration data")
        kwargs["output_integer_quantized_tflite"] = True
        kwargs["custom_input_op_name_np_data_path"] = _calibration_files(
            req["calibration_npz"], inputs, moved, out, _ranks(model)
        )

    import onnx2tf.onnx2tf as o2t

    o2t.download_test_image_data = _offline_sample_images  # never fetch sample data
    probe = _probe_inputs(req.get("probe_npz"), model, inputs, bool(req.get("batchable")))
    # onnx2tf's strict mode (its default) fits transposes to a batch-1 dummy inference and can bake
    # that batch into reshapes (Flatten -> [1, -1]): the SavedModel then declares batch None but
    # fails on batch 2. Non-strict keeps the batch dynamic on such models. Try non-strict first and
    # keep it only if the SavedModel matches onnxruntime on real inputs; else convert again strictly.
    attempts = [{"disable_strict_mode": True}, {}]
    seconds, report = 0.0, {}
    last_exc: WorkerError | None = None
    for extra in attempts:
        if saved.exists():
            shutil.rmtree(saved)
        t0 = time.perf_counter()
        try:
            _convert(o2t, {**kwargs, **extra}, out, model, src, req["model"])
        except WorkerError as e:  # a node failing in one mode may convert in the other
            seconds += time.perf_counter() - t0
            last_exc = e
            continue
        seconds += time.perf_counter() - t0
        report = _probe(saved, model, probe, moved)
        report["strict_mode"] = not extra.get("disable_strict_mode", False)
        if report["ok"]:
            break
    if not (saved / "saved_model.pb").exists() and last_exc is not None:
        raise last_exc
    if report and not report["ok"] and req.get("batchable") and report.get("batch", 1) > 1:
        # Neither mode handles batch 2: accept a correct batch-1 model and say so.
        one = _probe(saved, model, {k: v[:1] for k, v in probe.items()}, moved)
        if one["ok"]:
            report = {**one, "strict_mode": report["strict_mode"], "fixed_batch": 1}

    files, names = {}, {}
    for p in sorted(precisions):
        f = saved / f"model{SUFFIX[p]}"
        if not f.exists():
            raise WorkerError("backend_crash", f"onnx2tf reported success but wrote no {f.name}")
        files[p] = str(f)
        names[p] = _output_names(f, outputs)
    return {
        "files": files,
        "saved_model": str(saved),
        "output_names": names,
        "inputs": inputs,
        "outputs": outputs,
        "convert_seconds": seconds,
        "probe": report,
        "versions": versions("onnx2tf", "tensorflow", "onnx"),
    }


if __name__ == "__main__":
    main(handle)
