"""Conversion benchmark: one command, ratios measured in the same run (absolute times are noisy here).

    .venv/bin/python bench/convert.py [--targets onnx,tflite,tfjs,coreml] [--runs 300]

Prints:
  1. int8-static vs fp32 in ONNX Runtime: latency ratio (batch 1 and 32), size ratio, top-1 drop,
     on the bundled digits CNN and on a MobileNet-style net (depthwise separable) trained on digits.
  2. per target: edgekit's conversion step time / the underlying tool called directly, same model,
     same modes (goal <= 1.2x). edgekit's step is the wall time of the whole export (legalize,
     toolchain subprocess start, result parsing; ORT-format companions for onnx); validation is
     reported separately because the raw tools do not validate at all.
Goals (issue 2): int8 latency <= 0.8x fp32, size <= 0.3x, top-1 drop <= 0.5 pt on digits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converters.pipeline import convert  # noqa: E402
from converters.sources import SAMPLES_DIR  # noqa: E402

GOALS = {"latency": 0.8, "size": 0.3, "drop": 0.5, "overhead": 1.2}


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # single-thread: stabler on a shared 2-core machine
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def interleaved_latency(a: Path, b: Path, x: np.ndarray, runs: int) -> tuple[float, float]:
    """Median latency of two models, alternating runs so machine noise hits both equally."""
    sa, sb = _session(a), _session(b)
    name = sa.get_inputs()[0].name
    for _ in range(20):
        sa.run(None, {name: x})
        sb.run(None, {name: x})
    ta, tb = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        sa.run(None, {name: x})
        t1 = time.perf_counter()
        sb.run(None, {name: x})
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def quant_section(models: dict[str, dict], runs: int, tmp: Path) -> list[dict]:
    rows = []
    for name, m in models.items():
        out = tmp / f"q-{name}"
        report = convert(
            m["onnx"],
            targets=["onnx"],
            modes=["none", "int8"],
            out=out,
            calibration=m["calib"],
            eval_data=m["eval"],
        )
        by = {a.mode: a for a in report.artifacts}
        fp32, int8 = out / by["none"].main_file, out / by["int8"].main_file
        ev = np.load(m["eval"] or m["calib"])["input"]
        l1 = interleaved_latency(fp32, int8, ev[:1], runs)
        l32 = interleaved_latency(fp32, int8, ev[:32], max(runs // 10, 20))
        rows.append(
            {
                "model": name,
                "fp32_ms_b1": l1[0],
                "int8_ms_b1": l1[1],
                "latency_ratio_b1": l1[1] / l1[0],
                "latency_ratio_b32": l32[1] / l32[0],
                "size_ratio": by["int8"].bytes / by["none"].bytes,
                "fp32_top1": report.reference.get("top1"),
                "int8_drop_pts": by["int8"].top1_drop_pts,
                "int8_cosine": by["int8"].cosine,
            }
        )
    return rows


def _timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def overhead_section(targets: list[str], m: dict, tmp: Path) -> list[dict]:
    """edgekit's conversion step vs the raw tool on the same prepared model and modes."""
    from converters.toolchains import manager

    rows = []
    for target in targets:
        modes = {"onnx": ["int8"], "tflite": ["none", "int8-dynamic"], "tfjs": ["none"], "coreml": ["none"]}[
            target
        ]
        tc_name = {"tflite": "tensorflow", "tfjs": "tensorflow", "coreml": "coreml"}.get(target)
        if tc_name and not manager.resolve(tc_name).installed():
            rows.append(
                {"target": target, "skipped": f"toolchain missing: edgekit toolchain install {target}"}
            )
            continue
        out = tmp / f"o-{target}"
        t0 = time.perf_counter()
        report = convert(
            m["onnx"], targets=[target], modes=modes, out=out, calibration=m["calib"], eval_data=m["eval"]
        )
        total = time.perf_counter() - t0
        ok = [a for a in report.artifacts if a.status == "ok"]
        step = report.export_seconds[target]
        extra = sum(a.checks.get("companion_seconds", 0.0) for a in report.artifacts)  # ORT-format files
        raw = raw_tool_seconds(target, m, tmp, manager)
        rows.append(
            {
                "target": target,
                "modes": modes,
                "all_ok": len(ok) == len(modes),
                "edgekit_step_s": step,
                "raw_tool_s": raw,
                "overhead_ratio": step / raw if raw else None,
                "companion_s": extra,
                "overhead_ratio_same_outputs": (step - extra) / raw if raw else None,
                "edgekit_total_s": total,
            }
        )
    return rows


def raw_tool_seconds(target: str, m: dict, tmp: Path, manager) -> float:
    src = tmp / f"raw-{target}.onnx"
    src.write_bytes(Path(m["onnx"]).read_bytes())
    if target == "onnx":
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from converters.data import Dataset
        from converters.quantize.calibration import DatasetReader

        npz = np.load(m["calib"])
        t0 = time.perf_counter()
        # onnxruntime's documented static flow: pre-process, then quantize.
        quant_pre_process(str(src), str(tmp / "raw-pre.onnx"))
        quantize_static(
            str(tmp / "raw-pre.onnx"),
            str(tmp / "raw-int8.onnx"),
            DatasetReader(
                Dataset({"input": npz["input"][:, None]}, None, None)
            ),  # rows -> samples of batch 1
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return time.perf_counter() - t0
    tc = manager.resolve(target)
    env = manager.worker_env(tc.root)
    bin_dir = tc.python.parent
    if target == "tflite":
        return _timed(
            [
                str(bin_dir / "onnx2tf"),
                "-i",
                str(src),
                "-o",
                str(tmp / "raw-tflite"),
                "-kat",
                "input",
                "-odrqt",
                "-n",
            ],
            env,
        )
    if target == "tfjs":
        t = _timed(
            [
                str(bin_dir / "onnx2tf"),
                "-i",
                str(src),
                "-o",
                str(tmp / "raw-tfjs-sm"),
                "-kat",
                "input",
                "-osd",
                "-n",
            ],
            env,
        )
        # tensorflowjs imports two packages it never uses for SavedModels; stub them as edgekit's
        # worker does, then call its own CLI entry point.
        script = (
            "import sys, types; sys.modules['tensorflow_decision_forests'] = types.ModuleType('tfdf');"
            "m = types.ModuleType('jc'); m.convert_jax = None;"
            "sys.modules['tensorflowjs.converters.jax_conversion'] = m;"
            "from tensorflowjs.converters.converter import pip_main;"
            "sys.argv = ['tensorflowjs_converter', '--input_format=tf_saved_model',"
            " '--output_format=tfjs_graph_model', sys.argv[1], sys.argv[2]]; pip_main()"
        )
        return t + _timed(
            [str(tc.python), "-c", script, str(tmp / "raw-tfjs-sm"), str(tmp / "raw-tfjs")], env
        )
    # The same torchvision stand-in edgekit's worker installs (importing the worker installs it).
    script = (
        f"import sys; sys.path.insert(0, {str(manager.WORKERS)!r}); import coreml_worker;"
        "import torch, onnx, coremltools as ct, onnx2torch;"
        f"m = onnx2torch.convert(onnx.load({str(src)!r})).eval();"
        "t = torch.jit.trace(m, torch.zeros(1, 1, 8, 8));"
        "ml = ct.convert(t, inputs=[ct.TensorType(name='input', shape=(1, 1, 8, 8))], convert_to='mlprogram',"
        " minimum_deployment_target=ct.target.iOS16, compute_precision=ct.precision.FLOAT32);"
        f"ml.save({str(tmp / 'raw.mlpackage')!r})"
    )
    return _timed([str(tc.python), "-c", script], env)


def mobilenetish(tmp: Path) -> dict:
    from tests.converters.models import export_onnx, train

    model, _, (x_te, y_te), x_tr = train("mobilenetish", epochs=12, size=16)
    onnx_path = export_onnx(model, tmp / "mobilenetish.onnx", size=16)
    np.savez(tmp / "mn_calib.npz", input=x_tr[:200])
    np.savez(tmp / "mn_eval.npz", input=x_te, labels=y_te)
    return {"onnx": onnx_path, "calib": tmp / "mn_calib.npz", "eval": tmp / "mn_eval.npz"}


def mobilenetv2(tmp: Path) -> dict:
    """The MobileNetV2 architecture (2.2 M parameters) trained briefly on digits upscaled to 64x64."""
    from tests.converters.models import export_onnx, train

    model, _, (x_te, y_te), x_tr = train("mobilenetv2", epochs=4, size=64)
    onnx_path = export_onnx(model, tmp / "mobilenetv2.onnx", size=64)
    np.savez(tmp / "mnv2_calib.npz", input=x_tr[:200])
    np.savez(tmp / "mnv2_eval.npz", input=x_te, labels=y_te)
    return {"onnx": onnx_path, "calib": tmp / "mnv2_calib.npz", "eval": tmp / "mnv2_eval.npz"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="onnx,tflite,tfjs,coreml")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--quick", action="store_true", help="skip the MobileNetV2 model (about a minute of training)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as t:
        tmp = Path(t)
        digits = {
            "onnx": SAMPLES_DIR / "digits_cnn.onnx",
            "calib": SAMPLES_DIR / "digits_calib.npz",
            "eval": SAMPLES_DIR / "digits_eval.npz",
        }
        models = {"digits-cnn": digits, "mobilenetish-16": mobilenetish(tmp)}
        if not args.quick:
            models["mobilenetv2-64"] = mobilenetv2(tmp)
        quant = quant_section(models, args.runs, tmp)
        over = overhead_section(args.targets.split(","), digits, tmp)
    if args.json:
        print(json.dumps({"quantization": quant, "overhead": over, "goals": GOALS}, indent=2))
        return
    print(
        "int8-static vs fp32, ONNX Runtime CPU, 1 thread (ratios; goal latency <= 0.8, size <= 0.3, drop <= 0.5 pt)"
    )
    for r in quant:
        acc = (
            f"top-1 {r['fp32_top1']:.4f} drop {r['int8_drop_pts']:+.2f} pt"
            if r["fp32_top1"] is not None
            else f"cosine {r['int8_cosine']:.4f} (random weights, no labels)"
        )
        print(
            f"  {r['model']:<16} latency b1 {r['latency_ratio_b1']:.2f}x ({r['fp32_ms_b1']:.3f} -> {r['int8_ms_b1']:.3f} ms)"
            f"  b32 {r['latency_ratio_b32']:.2f}x  size {r['size_ratio']:.2f}x  {acc}"
        )
    print("conversion step: edgekit / raw tool on the digits CNN (goal <= 1.2x)")
    for r in over:
        if "skipped" in r:
            print(f"  {r['target']:<7} skipped: {r['skipped']}")
            continue
        ratio = f"{r['overhead_ratio']:.2f}x" if r["overhead_ratio"] else "-"
        if r["companion_s"]:
            ratio += f" ({r['overhead_ratio_same_outputs']:.2f}x without the extra ORT-format file)"
        print(
            f"  {r['target']:<7} {ratio}  (edgekit {r['edgekit_step_s']:.2f} s vs raw {r['raw_tool_s']:.2f} s;"
            f" with validation {r['edgekit_total_s']:.2f} s; all ok: {r['all_ok']})"
        )


if __name__ == "__main__":
    main()
