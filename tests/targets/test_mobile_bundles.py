"""iOS and Android bundles: generated sources vs the card, artifacts checked in what can run here
(the .tflite in LiteRT vs onnxruntime fp32; the Core ML spec loaded by coremltools in its
toolchain), completeness, relocation, and sizes from the CLI."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekit.cli import app
from tests.targets.conftest import relocate

# Max abs on logits vs onnxruntime fp32 (measured: fp16 7e-3, full int8 1.5 on the eval set).
TOL = {"fp16": 1e-2, "int8": 3.0}


def _bundle(kind: str, conv, out, *extra: str) -> dict:
    res = CliRunner().invoke(app, ["bundle", kind, str(conv), "--out", str(out), "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def _complete(out) -> None:
    manifest = json.loads((out / "edgekit-bundle.json").read_text())
    listed = {f["path"]: f["bytes"] for f in manifest["files"]}
    on_disk = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    on_disk.pop("edgekit-bundle.json")
    assert listed == on_disk
    assert manifest["sizes"]["total"] == sum(listed.values())


def _balanced(src: str) -> None:
    for o, c in ("{}", "()", "[]"):
        assert src.count(o) == src.count(c), (o, c)


@pytest.mark.parametrize("mode", ["int8", "fp16"])
def test_android_bundle(mode, convert_profile, reference, eval_inputs, tmp_path):
    from targets.runtimes.litert import LiteRTRuntime

    conv, _ = convert_profile("android")
    info = _bundle("android", conv, tmp_path / "android", *(["--mode", mode] if mode != "int8" else []))
    assert info["mode"] == mode and info["sizes"]["model"] > 0
    out = relocate(tmp_path / "android", tmp_path)
    _complete(out)
    card = json.loads((out / "assets" / "model_card.json").read_text())
    model_file = out / card["bundle"]["files"][0]
    assert model_file.is_file() and card["bundle"]["input_layout"] == "NCHW"
    assert card["labels"] == [str(i) for i in range(10)] and card["preprocessing"]["scale"] == 0.0625

    kt = (out / "DigitsCnnModel.kt").read_text()
    _balanced(kt)
    for needle in (
        f'const val MODEL_FILE = "{model_file.name}"',
        'val INPUT_NAMES = listOf("input")',
        'val OUTPUT_NAMES = listOf("logits")',
        "val INPUT_SHAPE = intArrayOf(1, 1, 8, 8)",
        "val LOGITS_SHAPE = intArrayOf(1, 10)",
        'const val INPUT_LAYOUT = "NCHW"',
        'val LABELS = listOf("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")',
        "import org.tensorflow.lite.Interpreter",
        "DataType.INT8 ->",
        "fun predict(input: FloatArray): Output",
        "data class Output(val logits: FloatArray)",
    ):
        assert needle in kt, needle

    # The shipped .tflite, from its new location, on the shipped samples, vs onnxruntime fp32.
    sample = json.loads((out / "sample_input.json").read_text())
    x = np.asarray(sample["inputs"]["input"]["data"], np.float32).reshape(sample["inputs"]["input"]["shape"])
    assert np.array_equal(x, eval_inputs["input"])
    rt = LiteRTRuntime(model_file, output_names=["logits"])
    got = np.concatenate([rt.run({"input": x[i : i + 1]})["logits"] for i in range(len(x))])
    ref = reference({"input": x})["logits"]
    err = float(np.abs(got - ref).max())
    assert err <= TOL[mode] and (got.argmax(1) == ref.argmax(1)).all(), err
    if "expected" in sample:  # only when the conversion also kept the fp32 ONNX (-t onnx -q none)
        # the bundle's self-check is the conversion's own bound for this precision
        from edgekit.formats import tolerance_for_label

        assert sample["tolerance"] == tolerance_for_label(info["precision"]).to_dict()
    print(
        f"android {mode}: LiteRT max abs {err:.2e}, model {info['sizes']['model']} B, total {info['sizes']['total']} B"
    )


def test_ios_bundle(convert_profile, tmp_path):
    conv, _ = convert_profile("ios")
    info = _bundle("ios", conv, tmp_path / "ios")
    assert info["mode"] == "int8-dynamic" and info["precision"] == "w8-linear"
    out = relocate(tmp_path / "ios", tmp_path)
    _complete(out)
    pkg = out / "DigitsCnn.mlpackage"
    manifest = json.loads((pkg / "Manifest.json").read_text())
    for item in manifest["itemInfoEntries"].values():
        assert (pkg / "Data" / item["path"]).exists(), item
    assert (pkg / "Data/com.apple.CoreML/model.mlmodel").stat().st_size > 0

    swift = (out / "DigitsCnnModel.swift").read_text()
    _balanced(swift)
    for needle in (
        "public final class DigitsCnnModel",
        'public static let inputNames: [String] = ["input"]',
        'public static let outputNames: [String] = ["logits"]',
        "public static let inputShape: [Int] = [1, 1, 8, 8]",
        "dataType: .float32",
        '"input": MLFeatureValue(multiArray: input.input)',
        'result.featureValue(for: "logits")?.multiArrayValue',
        'Bundle.main.url(forResource: "DigitsCnn", withExtension: "mlmodelc")',
        '"0", "1", "2"',
        "layout NCHW",
    ):
        assert needle in swift, needle
    card = json.loads((out / "model_card.json").read_text())
    assert card["bundle"]["class"] == "DigitsCnnModel" and card["inputs"][0]["shape"] == ["batch", 1, 8, 8]

    # The relocated package loads as a Core ML spec (coremltools lives only in its toolchain).
    from converters.toolchains import manager

    tc = manager.resolve("coreml")
    if not tc.installed():
        pytest.skip("coreml toolchain not installed: spec check needs `edgekit toolchain install coreml`")
    code = (
        "import json,sys,coremltools as ct\n"
        "m=ct.models.MLModel(sys.argv[1],skip_model_load=True);s=m.get_spec()\n"
        "print(json.dumps({'in':[(i.name,list(i.type.multiArrayType.shape),i.type.multiArrayType.dataType) for i in s.description.input],"
        "'out':[o.name for o in s.description.output],'type':s.WhichOneof('Type')}))"
    )
    proc = subprocess.run(
        [str(tc.python), "-c", code, str(pkg)],
        capture_output=True,
        text=True,
        env=manager.worker_env(tc.root),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    spec = json.loads(proc.stdout.strip().splitlines()[-1])
    assert spec["type"] == "mlProgram"
    assert [i[0] for i in spec["in"]] == ["input"] and spec["in"][0][1][1:] == [1, 8, 8]
    assert spec["in"][0][2] == 65568  # ArrayFeatureType.FLOAT32: matches `dataType: .float32`
    assert spec["out"] == ["logits"]
    print(f"ios: package {info['sizes']['model']} B, total {info['sizes']['total']} B")


def test_bundle_refuses_missing_target(convert_profile, tmp_path):
    conv, _ = convert_profile("x86-store-pc")
    res = CliRunner().invoke(app, ["bundle", "android", str(conv), "--out", str(tmp_path / "a")])
    assert res.exit_code != 0 and "no validated tflite artifact" in str(res.exception or res.output)
