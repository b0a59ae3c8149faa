"""Device profiles: data files, resolution with flag overrides, and real conversions per profile."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgekit import formats
from edgekit.cli import app
from edgekit.errors import EdgekitError
from targets.profiles import SUPPORTED_MODES, load_profiles, resolve_profile

PROFILES = ["x86-store-pc", "arm64-linux", "android", "ios", "browser"]


def test_supported_modes_match_the_format_table():
    assert {t: tuple(f.modes) for t, f in formats.TARGETS.items()} == SUPPORTED_MODES


def test_every_required_profile_is_data_with_runtime_and_notes():
    profiles = load_profiles()
    assert set(PROFILES) <= set(profiles)
    for p in profiles.values():
        assert p.targets and p.modes and p.runtime and p.notes and p.description
        for t, m in p.pairs:
            assert formats.support(t, m)[0], (p.name, t, m)
    assert profiles["x86-store-pc"].pairs == [("onnx", "int8")]
    assert set(profiles["arm64-linux"].pairs) == {("tflite", "int8"), ("onnx", "int8")}
    assert profiles["ios"].pairs == [("coreml", "int8-dynamic")]
    assert set(profiles["browser"].targets) == {"tfjs", "onnx"}


def test_bad_profile_files_are_refused(tmp_path):
    (tmp_path / "bad.toml").write_text('description="x"\ntargets=["tfjs"]\nmodes=["int8"]\nruntime="r"\n')
    with pytest.raises(EdgekitError, match="does not support mode"):
        load_profiles(tmp_path)
    (tmp_path / "bad.toml").write_text(
        'description="x"\ntargets=["onnx"]\nmodes=["none"]\nruntime="r"\nfoo=1\n'
    )
    with pytest.raises(EdgekitError, match="unknown keys"):
        load_profiles(tmp_path)


def test_resolve_profile_and_flag_overrides():
    t, m, by = resolve_profile("arm64-linux", None, None)
    assert (t, m) == (["tflite", "onnx"], ["int8"])
    assert by == {("tflite", "int8"): "profile:arm64-linux", ("onnx", "int8"): "profile:arm64-linux"}
    # A profile may give each target its own modes: the pairs to convert are exactly its own.
    t, m, by = resolve_profile("browser", None, None)
    assert by == {("tfjs", "fp16"): "profile:browser", ("onnx", "none"): "profile:browser"}
    # --quantize replaces the profile's modes; pairs the profile did not list are the flag's.
    t, m, by = resolve_profile("browser", None, ["none", "fp16"])
    assert m == ["none", "fp16"] and set(by) == {(a, b) for a in ("tfjs", "onnx") for b in ("none", "fp16")}
    assert by[("tfjs", "fp16")] == "profile:browser" and by[("tfjs", "none")] == "flag"
    assert by[("onnx", "none")] == "profile:browser" and by[("onnx", "fp16")] == "flag"
    t, m, by = resolve_profile("android", ["onnx"], None)
    assert t == ["onnx"] and set(by.values()) == {"flag"}
    with pytest.raises(EdgekitError, match="unknown profile"):
        resolve_profile("toaster", None, None)


def test_targets_list_cli():
    runner = CliRunner()
    res = runner.invoke(app, ["targets", "list", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert set(PROFILES) <= set(rows)
    assert rows["android"]["pairs"] == [["tflite", "int8"], ["tflite", "fp16"]]
    res = runner.invoke(app, ["targets", "list"])
    assert res.exit_code == 0 and "x86-store-pc" in res.output
    # Per-target modes (browser: tfjs fp16, onnx none), one line per profile row when piped.
    browser = [line for line in res.output.splitlines() if "browser" in line or "onnx none" in line]
    assert "tfjs fp16" in browser[0] and "onnx none" in browser[1], browser
    assert "tfjs tfjs" not in res.output


@pytest.mark.parametrize("name", PROFILES)
def test_profile_converts_end_to_end_and_report_says_who_chose(name, convert_profile):
    """Every profile converts the digits CNN with validation; report rows carry chosen_by."""
    out, report = convert_profile(name)
    prof = load_profiles()[name]
    rows = {(a.target, a.mode): a for a in report.artifacts}
    assert set(rows) == set(prof.pairs)
    for pair, row in rows.items():
        assert row.status == "ok", (pair, row.error)
        assert row.chosen_by == f"profile:{name}"
        assert row.max_abs_err is not None and row.top1_drop_pts is not None and row.top1_drop_pts <= 1.0
    saved = json.loads((out / "report.json").read_text())
    assert saved["profile"] == name
    assert {a["chosen_by"] for a in saved["artifacts"]} == {f"profile:{name}"}


def test_profile_with_flag_override_via_cli(tmp_path):
    """`edgekit convert --profile x86-store-pc -q int8 -q fp16`: fp16 is the flag's choice."""
    res = CliRunner().invoke(
        app,
        [
            "convert",
            "sample:digits",
            "--profile",
            "x86-store-pc",
            "-q",
            "int8",
            "-q",
            "fp16",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "report.json").read_text())
    by = {(a["target"], a["mode"]): a["chosen_by"] for a in rep["artifacts"]}
    assert by == {("onnx", "int8"): "profile:x86-store-pc", ("onnx", "fp16"): "flag"}
