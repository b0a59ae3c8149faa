"""Provenance at the fleet: a real `edgekit convert` output published, its report carried in the
signed manifest, shown by `edgekit fleet models show`, and a report that does not match its
files refused at publish."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from converters.pipeline import convert
from converters.sources import SAMPLES_DIR
from edgekit.trust import SigningKey, build_root, dumps, load_trusted_root, sha256_file, sign_root
from edgekit.trust.manifest import ManifestVerifier
from fleet.errors import FleetError
from fleet.publisher import Publisher
from fleet.server import open_state

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("conv") / "digits"
    report = convert("sample:digits", targets=["onnx"], modes=["none", "int8"], out=out)
    assert report.ok
    return out


def test_report_travels_in_the_signed_manifest(converted: Path, tmp_path: Path) -> None:
    db, _store, registry = open_state(tmp_path / "state")
    try:
        stored = {a.key: a for a in registry.publish(converted, "digits", "1.0.0")}
        release = registry.version("digits", "1.0.0")
    finally:
        db.close()
    prov = release["provenance"]
    # The conversion's inputs, by digest: the bundled sample model, its calibration and eval sets.
    assert prov["source_sha256"] == sha256_file(SAMPLES_DIR / "digits_cnn.onnx")
    assert prov["calibration_sha256"] == sha256_file(SAMPLES_DIR / "digits_calib.npz")
    assert prov["eval_sha256"] == sha256_file(SAMPLES_DIR / "digits_eval.npz")
    assert prov["converted_at"] and prov["published_at"] and prov["edgekit_version"]
    assert set(prov["artifacts"]) == set(stored) == {"onnx", "onnx-int8-static"}
    for key, a in stored.items():
        row = prov["artifacts"][key]
        assert (row["sha256"], row["size"]) == (a.sha256, a.size)
        assert row["parity"]["cosine"] > 0.99 and "top1" in row["accuracy"]
        assert row["versions"]  # the runtime and converter versions the report recorded

    # Signed by the real publisher and accepted by the agents' verifier.
    root_key, release_key = SigningKey.generate(), SigningKey.generate()
    root = load_trusted_root(dumps(sign_root(build_root([root_key], [release_key.public_hex]), [root_key])))
    pub = Publisher(None, None, "f1", release_key, "http://127.0.0.1:1")  # type: ignore[arg-type]
    m = ManifestVerifier(root, "f1", "dev-1").verify(pub.manifest("dev-1", release, 1, "r-1"))
    assert m.provenance == prov


def test_models_show_prints_provenance(converted: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f'[server]\nfleet = "cli"\nstate_dir = "{tmp_path / "state"}"\n')
    base = [sys.executable, "-m", "edgekit.cli", "fleet"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*base, *args, "--config", str(cfg)], capture_output=True, text=True, timeout=60
        )

    assert run("publish", str(converted), "--model", "digits", "--version", "1.0.0").returncode == 0
    shown = run("models", "show", "digits", "1.0.0")
    assert shown.returncode == 0, shown.stderr
    calib = sha256_file(SAMPLES_DIR / "digits_calib.npz")
    assert f"calibration sha256:   {calib}" in shown.stdout
    assert "artifact onnx-int8-static:" in shown.stdout and "cosine" in shown.stdout
    as_json = json.loads(run("models", "show", "digits", "1.0.0", "--json").stdout)
    assert as_json["provenance"]["calibration_sha256"] == calib
    assert run("models").stdout.split() == ["digits", "1.0.0"]  # the list still works
    missing = run("models", "show", "digits", "9.9")
    assert missing.returncode != 0 and "not published" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize("field, value, error", [("sha256", "ab" * 32, "sha256"), ("bytes", 1, "size")])
def test_report_that_does_not_match_its_file_is_refused(
    converted: Path, tmp_path: Path, field: str, value: object, error: str
) -> None:
    src = tmp_path / "conv"
    shutil.copytree(converted, src)
    report = json.loads((src / "report.json").read_text())
    report["artifacts"][0][field] = value
    (src / "report.json").write_text(json.dumps(report))
    db, _store, registry = open_state(tmp_path / "state")
    try:
        with pytest.raises(FleetError, match=f"{error} differs from report.json"):
            registry.publish(src, "digits", "1.0.0")
        assert registry.list() == []  # nothing half-published
    finally:
        db.close()
