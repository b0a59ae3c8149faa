"""Browser bundles in a real headless Chromium: ORT-web and TF.js outputs vs onnxruntime fp32.

The bundle is built from a real conversion (browser profile plus fp32 via -q none), moved to
another folder (relocatable), served on loopback by http.server, and driven with playwright-core
against the system Chromium. The page runs the bundled samples; outputs must match the reference
within the precision's tolerance, every request must stay on 127.0.0.1 (no CDN), and a screenshot
is kept in build/test-artifacts/.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.targets.conftest import relocate, save_artifact

HERE = Path(__file__).parent / "browser"
CHROMIUM = os.environ.get("EDGEKIT_CHROMIUM", "/usr/bin/chromium")
# Max abs error on logits (magnitude ~15) vs onnxruntime fp32. fp32: only summation order differs.
TOL = {"none": 1e-4, "fp16": 1e-2}

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="Node.js not installed (scripts/system-deps.sh)"),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    ),
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def browser_conv(convert_profile):
    out, report = convert_profile("browser", ["none", "fp16"])
    assert report.ok, [(a.target, a.mode, a.error) for a in report.artifacts]
    return out


@pytest.fixture(scope="module")
def driver_modules() -> Path:
    from targets.bundles.npm import install_locked

    return install_locked(HERE, "browser-test-tools")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve(directory: Path) -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(directory))
    )
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/"
    finally:
        srv.shutdown()
        srv.server_close()


def drive(modules: Path, bundle: Path, tmp: Path, runs: list[dict], screenshot: Path | None = None) -> dict:
    gen = serve(bundle)
    url = next(gen)
    try:
        req = {
            "url": url,
            "userDataDir": str(tmp / "chromium-profile"),  # fresh per call
            "executablePath": CHROMIUM,
            "screenshot": str(screenshot) if screenshot else None,
            "runs": runs,
        }
        (tmp / "drive.json").write_text(json.dumps(req))
        proc = subprocess.run(
            ["node", str(HERE / "drive.mjs"), str(modules), str(tmp / "drive.json")],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout)
    finally:
        gen.close()


def build(conv: Path, tmp: Path, runtime: str, mode: str) -> Path:
    from targets.bundles.web import build_browser

    out = tmp / f"bundle-{runtime}-{mode}"
    info = build_browser(conv, out, runtime=runtime, mode=mode)
    assert info.mode == mode and info.runtime == runtime
    return relocate(out, tmp)


def check_run(run: dict, reference, eval_inputs, tol: float, backend: str) -> float:
    assert "error" not in run, (run.get("error"), run.get("pageText"))
    assert run["info"]["backend"] == backend, run["info"]["attempts"]
    assert not [e for e in run["errors"] if "404" in e], run["errors"]
    ref = reference({"input": eval_inputs["input"]})["logits"]
    batch = run["predictAll"]["outputs"]["logits"]
    got = np.asarray(batch["data"], dtype=np.float64).reshape(batch["shape"])
    assert got.shape == ref.shape == (8, 10)
    err = float(np.abs(got - ref).max())
    assert err <= tol, f"{backend}: max abs {err} > {tol}"
    assert (got.argmax(1) == ref.argmax(1)).all()
    one = np.asarray(run["sample0"]["outputs"]["logits"]["data"])  # through the page's Run path
    assert float(np.abs(one - ref[0]).max()) <= tol
    assert run["sample0"]["meanMs"] > 0
    assert "within" in run["pageText"] and "max abs diff" in run["pageText"] and "cosine" in run["pageText"]
    return err


def _local_only(result: dict) -> None:
    hosts = {u.split("/")[2] for u in result["requests"] if u.startswith("http")}
    assert hosts and all(h.startswith("127.0.0.1:") for h in hosts), hosts


@pytest.mark.parametrize("mode", ["none", "fp16"])
def test_onnxruntime_web_matches_reference(
    mode, browser_conv, driver_modules, reference, eval_inputs, tmp_path
):
    bundle = build(browser_conv, tmp_path, "onnxruntime-web", mode)
    sample = json.loads((bundle / "sample_input.json").read_text())
    assert np.array_equal(
        np.asarray(sample["inputs"]["input"]["data"], np.float32), eval_inputs["input"].ravel()
    )
    shot = tmp_path / f"browser-onnxruntime-web-{mode}.png"
    # WebGL cannot take this model (fp16 tensors) or is absent: load() must verify and fall back.
    result = drive(
        driver_modules,
        bundle,
        tmp_path,
        [{"backends": "wasm", "screenshot": True}, {"backends": "bogus,wasm"}],
        shot,
    )
    _local_only(result)
    errs = [check_run(r, reference, eval_inputs, TOL[mode], "wasm") for r in result["runs"]]
    fallback = result["runs"][1]["info"]["attempts"]
    assert fallback[0]["backend"] == "bogus" and not fallback[0]["ok"] and fallback[-1]["ok"]
    save_artifact(shot)
    print(f"onnxruntime-web {mode}: max abs {max(errs):.2e} (tolerance {TOL[mode]})")


@pytest.mark.parametrize("mode", ["none", "fp16"])
def test_tfjs_matches_reference(mode, browser_conv, driver_modules, reference, eval_inputs, tmp_path):
    bundle = build(browser_conv, tmp_path, "tfjs", mode)
    shot = tmp_path / f"browser-tfjs-{mode}.png"
    result = drive(
        driver_modules,
        bundle,
        tmp_path,
        [{"backends": "wasm", "screenshot": True}, {"backends": "cpu"}, {"backends": "bogus,cpu"}],
        shot,
    )
    _local_only(result)
    errs = [
        check_run(r, reference, eval_inputs, TOL[mode], b)
        for r, b in zip(result["runs"], ["wasm", "cpu", "cpu"], strict=True)
    ]
    save_artifact(shot)
    print(f"tfjs {mode}: max abs {max(errs):.2e} (tolerance {TOL[mode]})")


def test_default_backend_and_cli_sizes(browser_conv, driver_modules, reference, eval_inputs, tmp_path):
    """The CLI default (TF.js, fp16) picks its first working backend by itself; --json gives sizes."""
    from typer.testing import CliRunner

    from edgekit.cli import app

    out = tmp_path / "web"
    res = CliRunner().invoke(app, ["bundle", "browser", str(browser_conv), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert (info["runtime"], info["mode"]) == ("tfjs", "fp16")
    assert info["sizes"]["model"] < 100_000 and 1_000_000 < info["sizes"]["runtime"] < 5_000_000
    manifest = json.loads((out / "edgekit-bundle.json").read_text())
    for f in manifest["files"]:
        assert (out / f["path"]).stat().st_size == f["bytes"]
    module = (out / "edgekit-model.js").read_text()
    assert '"name": "input"' in module and '"batch"' in module and "export async function predict" in module
    result = drive(driver_modules, out, tmp_path, [{"backends": None}])
    run = result["runs"][0]
    assert run["info"]["attempts"][-1]["ok"]
    check_run(run, reference, eval_inputs, TOL["fp16"], run["info"]["backend"])
