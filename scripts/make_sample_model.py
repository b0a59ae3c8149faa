"""Rebuild the bundled sample: a small CNN trained on scikit-learn's digits (needs torch, sklearn).

python scripts/make_sample_model.py   # writes edgekit/samples/digits_cnn.onnx + calib/eval npz
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.converters.models import export_onnx, train  # noqa: E402

OUT = ROOT / "edgekit" / "samples"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    model, acc, (x_te, y_te), x_tr = train("cnn", epochs=15)
    export_onnx(model, OUT / "digits_cnn.onnx")
    rng = np.random.default_rng(0)
    calib = x_tr[rng.choice(len(x_tr), 200, replace=False)]
    np.savez_compressed(OUT / "digits_calib.npz", input=calib)
    np.savez_compressed(OUT / "digits_eval.npz", input=x_te, labels=y_te)
    meta = {
        "name": "digits-cnn",
        "task": "classification",
        "labels": [str(i) for i in range(10)],
        "layout": "NCHW",
        "preprocessing": {"description": "8x8 grey digit, pixel values 0..16 divided by 16", "scale": 1 / 16},
        "trained_top1": round(acc, 4),
    }
    (OUT / "digits_cnn.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"digits_cnn: test top-1 {acc:.4f}")


if __name__ == "__main__":
    main()
