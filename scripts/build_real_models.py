"""Build the five real-architecture test models, and check them against the raw tools.

When `convert` fails on one of them, the raw tool on the same file says whose failure it is:

  .venv/bin/python scripts/build_real_models.py build DIR [NAME ...]
      train + export + write calibration/eval .npz (tests/converters/real_models.py)
  .venv/bin/python scripts/build_real_models.py onnx2tf DIR NAME [--ois NAME:D,D,...] [--unroll] [--int8]
      raw onnx2tf (tensorflow toolchain), every input kept in its ONNX layout; the float32 .tflite
      run in LiteRT without Flex (what edgekit validates with) vs onnxruntime on the first eval
      sample; --int8: full-integer quantization of onnx2tf's SavedModel by TFLiteConverter with whole
      samples in their own dtypes (onnx2tf's calibrator feeds float32 rows of axis 0, which int64
      inputs and inputs without a batch axis cannot take), judged by cosine on the eval set
  .venv/bin/python scripts/build_real_models.py onnx2torch DIR NAME
      onnx2torch.convert in the coreml toolchain (the first step of edgekit's Core ML route)
  .venv/bin/python scripts/build_real_models.py ort-int8 DIR NAME
      onnxruntime static QDQ int8 as edgekit calls it (every op type) and MatMul/Gemm/Conv only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Runs in the tensorflow toolchain: argv = model, out_dir, eval and calibration stacks, options JSON.
ONNX2TF = r"""
import json, re, shutil, sys
import numpy as np
from pathlib import Path
model, out, eval_npz, calib_npz, opts = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
import onnx, onnxruntime as ort
import onnx2tf.onnx2tf as o2t
o2t.download_test_image_data = lambda *a, **k: np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32)
shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
shutil.copy(model, out / "m.onnx")  # onnx2tf rewrites its input
g = onnx.load(model).graph
inits = {i.name for i in g.initializer}
names = [i.name for i in g.input if i.name not in inits]
# onnx2tf matches these against its own spelling of the names: ":" becomes "__", "." stays
kw = {"keep_shape_absolutely_input_names": [n.replace(":", "__") for n in names], "non_verbose": True}
if opts["ois"]: kw["overwrite_input_shape"] = opts["ois"]
if opts["unroll"]: kw["enable_rnn_unroll"] = True
o2t.convert(input_onnx_file_path=str(out / "m.onnx"), output_folder_path=str(out / "sm"), **kw)

def samples(npz):  # a stack of whole inputs per name (written by the caller)
    d = np.load(npz)
    for i in range(len(d[names[0]])):
        yield {k: d[k][i] for k in names}

def key(n, keys):
    for c in (n, n.replace(":", "__"), re.sub(r"[^A-Za-z0-9_]", "_", n)):
        if c in keys: return c
    raise KeyError(f"{n} not in {list(keys)}")

def compare(runner, feeds, sess):
    refs, gots = [], []
    det_in, det_out = runner.get_input_details(), runner.get_output_details()
    for feed in feeds:
        q = {}
        for n, v in feed.items():
            d = det_in[key(n, det_in)]
            if d["dtype"] == np.int8:
                s, z = d["quantization"]; v = np.clip(np.round(v / s + z), -128, 127)
            q[key(n, det_in)] = v.astype(d["dtype"])
        got = {}
        for k, y in runner(**q).items():
            s, z = det_out[k]["quantization"]
            got[k] = (y.astype(np.float32) - z) * s if det_out[k]["dtype"] == np.int8 else y
        for r in sess.run(None, feed):  # match by element count: tools rename and re-lay outputs
            y = [v for v in got.values() if v.size == r.size][0]
            refs.append(r.ravel()); gots.append(y.reshape(r.shape).ravel() if y.shape != r.shape else y.ravel())
    a, b = np.concatenate(refs).astype(np.float64), np.concatenate(gots).astype(np.float64)
    return float(np.abs(a - b).max()), float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

from ai_edge_litert.interpreter import Interpreter
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
f32 = out / "sm" / "m_float32.tflite"
res = {"float32_written": f32.exists()}
# TensorFlow is loaded here, so this interpreter runs Flex ops; edgekit's LiteRT cannot: list them
res["flex_ops"] = sorted({m.decode() for m in re.findall(rb"Flex[A-Z][A-Za-z0-9]+", f32.read_bytes())})
try:
    it = Interpreter(model_path=str(f32))
    res["inputs"] = {d["name"]: [int(x) for x in d["shape_signature"]] for d in it.get_input_details()}
    res["float32"] = compare(it.get_signature_runner(), list(samples(eval_npz))[:8], sess)
except Exception as e:
    res["float32_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
if opts["int8"]:
    import tensorflow as tf
    spec = tf.saved_model.load(str(out / "sm")).signatures["serving_default"].structured_input_signature[1]
    def rep():
        for s in samples(calib_npz):
            d = {key(n, spec): s[n].astype(spec[key(n, spec)].dtype.as_numpy_dtype) for n in names}
            yield {**d, **{n: d[key(n, spec)] for n in names}}  # both spellings: the calibrator picks
    c = tf.lite.TFLiteConverter.from_saved_model(str(out / "sm"))
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = rep
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = c.inference_output_type = tf.int8
    try:
        (out / "int8.tflite").write_bytes(c.convert())
        it = Interpreter(model_path=str(out / "int8.tflite"))
        res["full_int8"] = compare(it.get_signature_runner(), list(samples(eval_npz)), sess)
    except Exception as e:
        res["full_int8_error"] = f"{type(e).__name__}: {str(e).splitlines()[-1][:300]}"
print("RESULT " + json.dumps(res))
"""

# Runs in the coreml toolchain: argv = model.
ONNX2TORCH = r"""
import sys, types
tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
def _na(*a, **k): raise NotImplementedError("torchvision stand-in")
ops.nms = ops.roi_align = ops.box_convert = _na; tv.ops = ops
sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops
import onnx
from onnx2torch import convert
try:
    convert(onnx.load(sys.argv[1])); print("RESULT onnx2torch ok")
except Exception as e:
    print(f"RESULT onnx2torch: {type(e).__name__}: {e}")
"""


def _toolchain_python(name: str) -> tuple[str, dict]:
    from converters.toolchains.manager import require, worker_env

    tc = require(name)
    return str(tc.python), worker_env(tc.root)


def _run(name: str, program: str, *args: str) -> None:
    python, env = _toolchain_python(name)
    proc = subprocess.run([python, "-c", program, *args], env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if lines:
        print(lines[-1][7:])
    else:
        tail = "\n".join(proc.stderr.strip().splitlines()[-12:])
        print(f"raw tool exited with code {proc.returncode} (negative: killed by that signal):\n{tail}")


def _feeds(d: Path, name: str, kind: str) -> list[dict]:
    """Whole-input feeds from DIR/NAME_{calib,eval}.npz, read by edgekit's data convention."""
    from tests.converters import real_models as rm

    model = d / f"{name}.onnx"
    stub = rm.RealModel(
        name, model, None, rm.onnx_input_names(model), d / f"{name}_calib.npz", d / f"{name}_eval.npz"
    )
    return rm.feeds_of(stub, stub.calib if kind == "calib" else stub.eval)


def _stack(feeds: list[dict], path: Path) -> str:
    import numpy as np

    np.savez(path, **{k: np.stack([f[k] for f in feeds]) for k in feeds[0]})
    return str(path)


def _ort_int8(d: Path, name: str) -> None:
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = d / f"{name}.onnx"
    calib, feeds = _feeds(d, name, "calib"), _feeds(d, name, "eval")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for label, extra in (
        ("every op (edgekit)", {}),
        ("MatMul/Gemm/Conv", {"op_types_to_quantize": ["MatMul", "Gemm", "Conv"]}),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            q = Path(tmp) / "q.onnx"
            quantize_static(
                str(model), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **extra,
            )  # fmt: skip
            sess = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
            a = np.concatenate([np.concatenate([r.ravel() for r in ref.run(None, f)]) for f in feeds])
            b = np.concatenate([np.concatenate([r.ravel() for r in sess.run(None, f)]) for f in feeds])
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        print(f"{label:20s} cosine {cos:.5f} max abs {np.abs(a - b).max():.3g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("dir", type=Path)
    b.add_argument("names", nargs="*")
    for cmd in ("onnx2tf", "onnx2torch", "ort-int8"):
        s = sub.add_parser(cmd)
        s.add_argument("dir", type=Path)
        s.add_argument("name")
        if cmd == "onnx2tf":
            s.add_argument("--ois", action="append", default=[], help="onnx2tf overwrite_input_shape")
            s.add_argument("--unroll", action="store_true", help="onnx2tf enable_rnn_unroll")
            s.add_argument("--int8", action="store_true")
    a = p.parse_args()
    if a.cmd == "build":
        from tests.converters import real_models as rm

        for name in a.names or rm.NAMES:
            m = rm.build(name, a.dir)
            print(name, m.onnx, json.dumps(m.metrics))
    elif a.cmd == "onnx2tf":
        d = a.dir
        opts = json.dumps({"ois": a.ois, "unroll": a.unroll, "int8": a.int8})
        with tempfile.TemporaryDirectory() as tmp:
            ev = _stack(_feeds(d, a.name, "eval"), Path(tmp) / "eval.npz")
            cal = _stack(_feeds(d, a.name, "calib"), Path(tmp) / "calib.npz")
            _run("tflite", ONNX2TF, str(d / f"{a.name}.onnx"), str(Path(tmp) / "o2t"), ev, cal, opts)
    elif a.cmd == "onnx2torch":
        _run("coreml", ONNX2TORCH, str(a.dir / f"{a.name}.onnx"))
    else:
        _ort_int8(a.dir, a.name)


if __name__ == "__main__":
    main()
