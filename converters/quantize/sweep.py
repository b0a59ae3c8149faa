"""Static int8 settings x x86 CPU classes x models: the measurement behind INT8_STATIC (onnx.py).

    python -m converters.quantize.sweep                       # the bundled digits sample
    python -m converters.quantize.sweep --model NAME=MODEL.onnx,CALIB.npz,EVAL.npz ... [--json rows.json]

Each setting quantizes the model here (calibration on this host), then fp32 and int8 run on every
CPU class (cpu_classes.py: natively and under QEMU). Per row: top-1 drop and cosine vs the fp32
model on the same class, the largest difference from the host's int8 outputs, size and host
latency ratios int8/fp32 (batch 32, one thread). Needs qemu-user-static for the emulated classes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from converters import validate
from converters.data import Dataset, stacked
from converters.quantize.cpu_classes import CPU_CLASSES, CpuClass, run
from converters.quantize.onnx import INT8_STATIC, Int8Static, to_int8_static
from edgekit.formats import Tolerance
from targets.runtimes.onnxrt import OnnxRuntime

_ANY = Tolerance(min_cosine=0.0, atol=0.0)  # parity() here only measures; it judges nothing


@dataclass(frozen=True)
class Variant:
    name: str
    settings: Int8Static
    session_config: dict[str, str] = field(default_factory=dict)  # ORT runtime options instead


VARIANTS = (
    Variant("u8s8", Int8Static(reduce_range=False)),
    Variant("u8s8-reduce_range", INT8_STATIC),
    Variant("u8u8", Int8Static(weights="QUInt8", reduce_range=False)),
    Variant("s8s8", Int8Static(activations="QInt8", reduce_range=False)),
    Variant("s8s8-reduce_range", Int8Static(activations="QInt8")),
    # The runtime-side alternative: ORT's own switch to U8U8 on AVX2 / AVX-512 without VNNI. It binds
    # every runtime on every device to set it, where reduce_range fixes the file itself.
    Variant("u8s8+x64quantprecision", Int8Static(reduce_range=False), {"session.x64quantprecision": "1"}),
)


@dataclass(frozen=True)
class ModelCase:
    name: str
    onnx: Path
    calib: Path
    eval: Path


def _stack(model: Path, npz: Path) -> tuple[Dataset, np.ndarray | None]:
    """The data as the pipeline holds it (converters/data.py convention), and its labels."""
    specs = OnnxRuntime(model).inputs
    with np.load(npz) as z:
        inputs = {s.name: stacked(z[s.name], s, npz.name) for s in specs}
        labels = z["labels"] if "labels" in z.files else None
    return Dataset(inputs, labels, npz), labels


def _feeds(data: Dataset) -> dict[str, np.ndarray]:
    """Samples concatenated along the batch axis (the models measured here all have one)."""
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in data.inputs.items()}


def _session(model: Path, config: dict[str, str]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    for k, v in config.items():
        opts.add_session_config_entry(k, v)
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def latency_ratio(
    fp32: Path, int8: Path, feeds: dict[str, np.ndarray], config: dict[str, str], reps: int = 60
) -> float:
    """Median int8 / median fp32 time on this host, one thread, runs interleaved so that load from
    other processes (a shared 2-core machine) hits both alike."""
    a, b = _session(fp32, {}), _session(int8, config)
    times: dict[int, list[float]] = {0: [], 1: []}
    for i in range(reps + 5):
        for k, s in enumerate((a, b)):
            t0 = time.perf_counter()
            s.run(None, feeds)
            if i >= 5:  # warm-up
                times[k].append(time.perf_counter() - t0)
    return statistics.median(times[1]) / statistics.median(times[0])


def measure(case: ModelCase, classes: list[CpuClass], tmp: Path) -> list[dict]:
    assert classes[0].qemu_cpu is None, "the first class is the host (max_abs_vs_host compares to it)"
    calib, _ = _stack(case.onnx, case.calib)
    evald, labels = _stack(case.onnx, case.eval)
    assert labels is not None, f"{case.eval} has no labels"
    feeds = _feeds(evald)
    batch = {k: v[:32] for k, v in feeds.items()}
    rows = []
    for v in VARIANTS:
        q = tmp / f"{case.name}-{v.name}.onnx"
        to_int8_static(case.onnx, q, calib, v.settings)
        lat = latency_ratio(case.onnx, q, batch, v.session_config)
        host_int8 = None
        for c in classes:
            r = run(c, [(case.onnx, feeds), (q, feeds)], session_config=v.session_config)
            if bad := r.mismatched_features():
                raise RuntimeError(f"class {c.name} is not what it claims: {bad}")
            ref, got = r.outputs
            host_int8 = got if host_int8 is None else host_int8  # classes[0] is the host
            p = validate.parity(_ANY, ref, got)
            rows.append(
                {
                    "model": case.name,
                    "setting": v.name,
                    "cpu": c.name,
                    "fp32_top1": round(100 * validate.top1(ref, labels), 2),
                    "drop_pts": round(100 * (validate.top1(ref, labels) - validate.top1(got, labels)), 2),
                    "cosine": round(p.cosine, 5),
                    "max_abs_vs_host": round(
                        max(float(np.max(np.abs(got[k] - host_int8[k]))) for k in got), 4
                    ),
                    "size_ratio": round(q.stat().st_size / case.onnx.stat().st_size, 3),
                    "latency_ratio_host": round(lat, 2),
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _case(arg: str) -> ModelCase:
    name, _, paths = arg.partition("=")
    onnx_path, calib, ev = (Path(p) for p in paths.split(","))
    return ModelCase(name, onnx_path, calib, ev)


def main(argv: list[str] | None = None) -> None:
    from converters.sources import SAMPLES_DIR

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", type=_case, help="NAME=MODEL.onnx,CALIB.npz,EVAL.npz")
    ap.add_argument("--classes", default=",".join(CPU_CLASSES), help="host first; default: all")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    a = ap.parse_args(argv)
    cases = a.model or [
        ModelCase(
            "digits",
            SAMPLES_DIR / "digits_cnn.onnx",
            SAMPLES_DIR / "digits_calib.npz",
            SAMPLES_DIR / "digits_eval.npz",
        )
    ]
    classes = [CPU_CLASSES[n] for n in a.classes.split(",")]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-sweep-") as tmp:
        for case in cases:
            rows += measure(case, classes, Path(tmp))
            print(table([r for r in rows if r["model"] == case.name]), flush=True)
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "classes": [asdict(c) for c in classes]}, indent=1))


if __name__ == "__main__":
    main()
