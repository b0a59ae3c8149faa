"""Delta updates: patch size and apply time of edgekit.delta (zstd patch-from) on fine-tuned models.

    .venv/bin/python bench/delta.py [--json]

Pairs (old -> new): the bundled digits CNN with its last layer retrained, the same with every
weight nudged (a full fine-tune: the worst case for any byte-level diff), and a 14 MB
MobileNet-sized net with its last 5% of weights retrained. Ratios against baselines of the same
run: delta bytes / full artifact bytes (issue 13's bar: <= 0.3 for a last-layer fine-tune),
delta bytes / the full artifact zstd-compressed alone, and apply time / the sha256 check every
full download does anyway. bsdiff4 is measured beside it when installed (it is not a dependency).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekit.delta import apply_delta, make_delta, zstd  # noqa: E402
from edgekit.trust import sha256_file  # noqa: E402

DIGITS = ROOT / "edgekit" / "samples" / "digits_cnn.onnx"


def perturbed(src: onnx.ModelProto, names: set[str] | None, scale: float, seed: int) -> bytes:
    m = onnx.ModelProto()
    m.CopyFrom(src)
    rng = np.random.default_rng(seed)
    for t in m.graph.initializer:
        if names is None or t.name in names:
            a = numpy_helper.to_array(t).copy()
            a += (rng.standard_normal(a.shape) * scale * float(np.abs(a).mean())).astype(a.dtype)
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    return m.SerializeToString()


def mobilenet_sized(seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits, nodes, prev = [], [], "x"
    for i in range(20):  # 20 x 416 x 416 float32 = 13.8 MB, about MobileNetV2's 3.5 M parameters
        inits.append(numpy_helper.from_array(rng.normal(0, 0.05, (416, 416)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 416])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 416])],
        inits,
    )
    return helper.make_model(g)


def pairs() -> dict[str, tuple[bytes, bytes]]:
    digits = onnx.load(str(DIGITS))
    big = mobilenet_sized(0)
    return {
        "digits_last_layer": (
            digits.SerializeToString(),
            perturbed(digits, {"head.3.weight", "head.3.bias"}, 0.1, 1),
        ),
        "digits_all_layers": (digits.SerializeToString(), perturbed(digits, None, 0.01, 2)),
        "mobilenet_sized_last_5pct": (big.SerializeToString(), perturbed(big, {"w19"}, 0.1, 3)),
    }


def timed(fn, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(name: str, old: bytes, new: bytes, tmp: Path) -> dict[str, float | int | str]:
    a, b, d, out = tmp / f"{name}.old", tmp / f"{name}.new", tmp / f"{name}.delta", tmp / f"{name}.out"
    a.write_bytes(old)
    b.write_bytes(new)
    make_s = timed(lambda: make_delta(a, b, d), runs=1)
    apply_s = timed(lambda: apply_delta(a, d, out, len(new)))
    assert out.read_bytes() == new
    verify_s = timed(lambda: sha256_file(b))  # what every full download costs after the wire
    row: dict[str, float | int | str] = {
        "pair": name,
        "full_bytes": len(new),
        "delta_bytes": d.stat().st_size,
        "delta_vs_full": round(d.stat().st_size / len(new), 4),
        "delta_vs_zstd_full": round(d.stat().st_size / len(zstd.compress(new, level=9)), 4),
        "make_ms": round(make_s * 1000, 1),
        "apply_ms": round(apply_s * 1000, 2),
        "apply_vs_sha256_check": round(apply_s / verify_s, 2),
    }
    try:
        import bsdiff4  # type: ignore[import-not-found]
    except ImportError:
        return row
    t0 = time.perf_counter()
    patch = bsdiff4.diff(old, new)
    t1 = time.perf_counter()
    bs_apply = timed(lambda: bsdiff4.patch(old, patch))
    row |= {
        "bsdiff4_delta_vs_full": round(len(patch) / len(new), 4),
        "bsdiff4_make_vs_zstd": round((t1 - t0) / make_s, 1),
        "bsdiff4_apply_vs_zstd": round(bs_apply / apply_s, 1),
    }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, old, new, Path(tmp)) for name, (old, new) in pairs().items()]
    if args.json:
        print(json.dumps({"delta": rows}))
        return
    for r in rows:
        print(", ".join(f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
