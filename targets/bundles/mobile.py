"""`edgekit bundle ios|android`: the artifact, its card, a generated wrapper source and a README.

The wrapper sources are generated from the model card (and the artifact's own I/O as the converter
recorded it), so an app gets typed inputs/outputs with the right names, shapes, dtypes and layout
instead of hand-written strings. Each bundle also carries `sample_input.json` (bundled samples
with the onnxruntime fp32 reference outputs): an app's unit test can assert the model on device.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from targets.bundles import (
    BundleInfo,
    Converted,
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
from targets.bundles.codegen import kotlin_source, readme_android, readme_ios, swift_source

IOS_PREFER = ("int8-dynamic", "fp16", "none", "palettize6", "palettize4")
# Full int8 first: smallest and fastest on phone CPUs/NPUs; fp16 is the GPU delegate's choice.
ANDROID_PREFER = ("int8", "fp16", "int8-dynamic", "none")


def pascal(name: str) -> str:
    """'digits-cnn' -> 'DigitsCnn' (a valid Swift/Kotlin type name)."""
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", name) if p]
    out = "".join(p[:1].upper() + p[1:] for p in parts) or "Model"
    return out if out[0].isalpha() else f"M{out}"


def _samples(conv: Converted, out: Path, precision: str) -> None:
    inputs, labels, source = sample_inputs(conv.card)
    write_sample_json(
        out / "sample_input.json",
        inputs,
        labels,
        source,
        reference_outputs(conv, inputs),
        tolerance(precision),
    )


def _io(conv: Converted, row: dict[str, Any], spec_key: str, inputs: bool) -> list[dict[str, Any]]:
    """The card's tensors, with the artifact's own names where the converter recorded them
    (`checks[spec_key]`, e.g. the Core ML spec's inputs), matched by position."""
    recorded = row.get("checks", {}).get(spec_key) or []
    card_tensors = conv.card.inputs if inputs else conv.card.outputs
    tensors = []
    for i, t in enumerate(card_tensors):
        name = recorded[i]["name"] if i < len(recorded) and recorded[i].get("name") else t.name
        tensors.append(
            {"name": name, "card_name": t.name, "dtype": t.dtype, "shape": t.shape, "layout": t.layout}
        )
    return tensors


def build_ios(converted: Path, out: Path, mode: str | None = None, force: bool = False) -> BundleInfo:
    conv = load_converted(converted)
    row = conv.pick("coreml", mode, IOS_PREFER)
    out = prepare_out(out, force)
    cls = pascal(conv.card.name)
    # Xcode generates a class named after the package file; ours is <Name>Model, so they coexist.
    package = f"{cls}.mlpackage"
    shutil.copytree(main_path(conv, row, ".mlpackage"), out / package)
    inputs, outputs = _io(conv, row, "spec_inputs", True), _io(conv, row, "spec_outputs", False)
    extra = {
        "target": "coreml",
        "mode": row["mode"],
        "precision": row["precision"],
        "files": [package],
        "class": f"{cls}Model",
        "coreml_inputs": inputs,
        "coreml_outputs": outputs,
        "minimum_deployment_target": "iOS 16",
        "validated": {
            k: row.get(k) for k in ("max_abs_err", "cosine", "parity_bound", "top1", "runtime_note")
        },
    }
    (out / "model_card.json").write_text(json.dumps(bundle_card(conv, extra), indent=2) + "\n")
    (out / f"{cls}Model.swift").write_text(swift_source(conv.card, cls, package, inputs, outputs))
    _samples(conv, out, row["precision"])
    info = BundleInfo(
        kind="ios",
        out=str(out),
        model=conv.card.name,
        target="coreml",
        mode=row["mode"],
        precision=row["precision"],
        runtime="Core ML (iOS 16+)",
        versions=row.get("versions", {}),
        artifact_sha256=row.get("sha256"),
    )
    info = finish(info, out, {"model": [package]})
    (out / "README.md").write_text(readme_ios(conv.card, cls, package, info, row))
    return finish(info, out, {"model": [package]})


def build_android(converted: Path, out: Path, mode: str | None = None, force: bool = False) -> BundleInfo:
    conv = load_converted(converted)
    row = conv.pick("tflite", mode, ANDROID_PREFER)
    out = prepare_out(out, force)
    cls = pascal(conv.card.name)
    model_file = f"{conv.card.name}-{row['mode']}.tflite"
    (out / "assets").mkdir()
    shutil.copyfile(main_path(conv, row, ".tflite"), out / "assets" / model_file)
    inputs, outputs = _io(conv, row, "tflite_inputs", True), _io(conv, row, "tflite_outputs", False)
    layout = row.get("checks", {}).get("layout") or (inputs[0]["layout"] if inputs else None)
    for t in inputs:  # the .tflite's layout is what the converter kept (NCHW as the ONNX, or NHWC)
        if t["layout"] and layout:
            t["layout"] = layout
    extra = {
        "target": "tflite",
        "mode": row["mode"],
        "precision": row["precision"],
        "files": [f"assets/{model_file}"],
        "class": f"{cls}Model",
        "input_layout": layout,
        "tflite_inputs": inputs,
        "tflite_outputs": outputs,
        "integer_io": row["mode"] == "int8",
        "validated": {k: row.get(k) for k in ("max_abs_err", "cosine", "parity_bound", "top1")},
    }
    (out / "assets" / "model_card.json").write_text(json.dumps(bundle_card(conv, extra), indent=2) + "\n")
    (out / f"{cls}Model.kt").write_text(
        kotlin_source(conv.card, cls, model_file, inputs, outputs, row["mode"])
    )
    _samples(conv, out, row["precision"])
    info = BundleInfo(
        kind="android",
        out=str(out),
        model=conv.card.name,
        target="tflite",
        mode=row["mode"],
        precision=row["precision"],
        runtime="LiteRT Interpreter",
        versions=row.get("versions", {}),
        artifact_sha256=row.get("sha256"),
    )
    groups = {"model": [f"assets/{model_file}"]}
    info = finish(info, out, groups)
    (out / "README.md").write_text(readme_android(conv.card, cls, model_file, info, row, layout))
    return finish(info, out, groups)
