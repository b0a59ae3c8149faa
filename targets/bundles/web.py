"""`edgekit bundle browser`: a static folder that runs the model in a web page, runtime vendored.

Layout of the bundle:
  index.html, demo.js     demo page (pick a sample or random input, run, outputs + latency)
  edgekit-model.js        ES module: MODEL (from the card), load(), predict(inputs), info()
  model/                  the artifact (model.onnx, or model.json + weight shards)
  vendor/<package>/       runtime files copied from the pinned npm install (no CDN at run time)
  sample_input.json       bundled samples + onnxruntime fp32 reference outputs + tolerance
  model_card.json, edgekit-bundle.json (manifest: files, sizes, versions)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from targets.bundles import (
    BundleInfo,
    bundle_card,
    finish,
    load_converted,
    main_path,
    prepare_out,
    reference_outputs,
    sample_inputs,
    tolerance,
    write_sample_json,
)
from targets.bundles.npm import install_locked

TEMPLATES = Path(__file__).parent / "browser"
PLACEHOLDER = "/*@EDGEKIT_CONFIG@*/ {}"

# Per runtime: the conversion target it takes, preferred modes (smallest download that keeps fp32
# accuracy first), backends tried at load in order, and the npm files it needs at run time.
RUNTIMES: dict[str, dict[str, Any]] = {
    "tfjs": {
        "target": "tfjs",
        "prefer": ("fp16", "none", "int8-dynamic"),
        "backends": ["wasm", "webgl", "cpu"],
        "packages": {
            "@tensorflow/tfjs": ["dist/tf.min.js"],
            "@tensorflow/tfjs-backend-wasm": [
                "dist/tf-backend-wasm.min.js",
                "dist/tfjs-backend-wasm.wasm",
                "dist/tfjs-backend-wasm-simd.wasm",
                "dist/tfjs-backend-wasm-threaded-simd.wasm",
            ],
        },
        "vendor": {
            "tfjs": "vendor/tfjs/tf.min.js",
            "tfjsWasm": "vendor/tfjs/tf-backend-wasm.min.js",
            "wasmDir": "vendor/tfjs/",
        },
    },
    "onnxruntime-web": {
        "target": "onnx",
        "prefer": ("fp16", "none", "int8", "int8-dynamic"),
        "backends": ["wasm", "webgl"],
        "packages": {
            # wasm-only build (the 14 MB CPU kernels) + the WebGL-only build as the fallback;
            # the all-in-one ort.min.mjs would pull the 28 MB JSEP wasm instead.
            "onnxruntime-web": [
                "dist/ort.wasm.min.mjs",
                "dist/ort-wasm-simd-threaded.mjs",
                "dist/ort-wasm-simd-threaded.wasm",
                "dist/ort.webgl.min.mjs",
            ],
        },
        "vendor": {
            "ort": "vendor/onnxruntime-web/ort.wasm.min.mjs",
            "ortWebgl": "vendor/onnxruntime-web/ort.webgl.min.mjs",
            "wasmDir": "vendor/onnxruntime-web/",
        },
    },
}
VENDOR_DIR = {"tfjs": "vendor/tfjs", "onnxruntime-web": "vendor/onnxruntime-web"}


def runtime_modules() -> Path:
    """node_modules with the pinned browser runtimes (npm ci once, cached by lock hash)."""
    return install_locked(TEMPLATES, "browser-runtimes")


def _vendor(runtime: str, out: Path) -> dict[str, str]:
    """Copy the runtime's files and a NOTICE; return {package: version}."""
    modules = runtime_modules()
    dest = out / VENDOR_DIR[runtime]
    dest.mkdir(parents=True, exist_ok=True)
    versions, notice = {}, []
    for pkg, files in RUNTIMES[runtime]["packages"].items():
        meta = json.loads((modules / pkg / "package.json").read_text())
        versions[pkg] = meta["version"]
        notice.append(
            f"{pkg} {meta['version']} ({meta.get('license', 'see package')}): {meta.get('homepage', '')}"
        )
        for f in files:
            shutil.copyfile(modules / pkg / f, dest / Path(f).name)
    (dest / "NOTICE.txt").write_text(
        "Vendored from the npm registry at bundle time (pinned by edgekit's package-lock.json):\n"
        + "\n".join(notice)
        + "\n"
    )
    return versions


def _copy_model(conv, row: dict[str, Any], runtime: str, out: Path) -> tuple[str, Path]:
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    if runtime == "onnxruntime-web":
        src = main_path(conv, row, ".onnx")
        shutil.copyfile(src, model_dir / "model.onnx")
        return "model/model.onnx", src
    src = main_path(conv, row, ".json")  # model.json; shards are listed after it in the report
    for f in row["files"]:
        shutil.copyfile(conv.root / f["path"], model_dir / Path(f["path"]).name)
    return f"model/{src.name}", src


def build_browser(
    converted: Path,
    out: Path,
    runtime: str | None = None,
    mode: str | None = None,
    sample_npz: Path | None = None,
    force: bool = False,
) -> BundleInfo:
    conv = load_converted(converted)
    if runtime is None:  # TF.js when the conversion has it: 3 MB of runtime instead of 15 MB
        runtime = "tfjs" if conv.ok_rows("tfjs") else "onnxruntime-web"
    spec = RUNTIMES[runtime]
    row = conv.pick(spec["target"], mode, spec["prefer"])
    out = prepare_out(out, force)

    versions = _vendor(runtime, out)
    model_rel, _ = _copy_model(conv, row, runtime, out)
    for name in ("index.html", "demo.js"):
        shutil.copyfile(TEMPLATES / name, out / name)

    tol = tolerance(row["precision"])
    inputs, labels, source = sample_inputs(conv.card, sample_npz)
    expected = reference_outputs(conv, inputs)
    write_sample_json(out / "sample_input.json", inputs, labels, source, expected, tol)

    card = conv.card
    layout = row.get("checks", {}).get("layout")
    extra = {
        "target": row["target"],
        "mode": row["mode"],
        "precision": row["precision"],
        "runtime": runtime,
        "files": [model_rel],
        "input_layout": layout or (card.inputs[0].layout if card.inputs else None),
        "validated": {k: row.get(k) for k in ("max_abs_err", "cosine", "parity_bound", "top1")},
    }
    (out / "model_card.json").write_text(json.dumps(bundle_card(conv, extra), indent=2) + "\n")

    sizes = {g: _dir_bytes(out / g) for g in ("model", "vendor")}
    config = {
        "name": card.name,
        "task": card.task,
        "labels": card.labels,
        "preprocessing": card.preprocessing,
        "inputs": [
            {"name": t.name, "dtype": t.dtype, "shape": t.shape, "layout": t.layout} for t in card.inputs
        ],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in card.outputs],
        "runtime": runtime,
        "precision": row["precision"],
        "mode": row["mode"],
        "modelPath": model_rel,
        "backends": spec["backends"],
        "vendor": spec["vendor"],
        "versions": versions,
        "tolerance": tol,
        "sizes": {"model": sizes["model"], "runtime": sizes["vendor"]},
    }
    module = (TEMPLATES / "edgekit-model.js").read_text()
    assert PLACEHOLDER in module, "edgekit-model.js template lost its config placeholder"
    (out / "edgekit-model.js").write_text(module.replace(PLACEHOLDER, json.dumps(config, indent=2), 1))

    info = BundleInfo(
        kind="browser",
        out=str(out),
        model=card.name,
        target=row["target"],
        mode=row["mode"],
        precision=row["precision"],
        runtime=runtime,
        versions=versions,
        artifact_sha256=row.get("sha256"),
    )
    return finish(info, out, {"model": ["model/"], "runtime": ["vendor/"]})


def _dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
