"""What the `edgekit` command writes where: command output alone on stdout (JSON that parses,
tables not cut at 80 columns), logs on stderr as plain lines or JSON, `python -m edgekit`,
shell completion, ISO 8601 timestamps, and the one-line refusal of a model card without
dtype or shape."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.convert_output import make_convert_output


def edgekit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, timeout=120, env=full
    )


def _fleet_toml(tmp_path: Path) -> Path:
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f'[server]\nfleet = "out"\nstate_dir = "{tmp_path / "state"}"\n')
    return cfg


def _card_that_warns(tmp_path: Path) -> Path:
    """A valid card naming an input the ONNX graph does not have: publish succeeds without a
    smoke test and logs a WARNING (fleet.registry) on the way, the case of the original report."""
    out = make_convert_output(tmp_path / "conv")
    card = json.loads((out / "model_card.json").read_text())
    card["inputs"][0]["name"] = "not-in-the-graph"
    (out / "model_card.json").write_text(json.dumps(card))
    return out


@pytest.mark.parametrize("how", ["text", "json-flag", "json-env"])
def test_publish_json_on_stdout_logs_on_stderr(tmp_path: Path, how: str) -> None:
    out, cfg = _card_that_warns(tmp_path), _fleet_toml(tmp_path)
    flags = ["--log-format", "json"] if how == "json-flag" else []
    env = {"EDGEKIT_LOG_FORMAT": "json"} if how == "json-env" else {}
    p = edgekit(
        *flags,
        "fleet",
        "publish",
        str(out),
        "--model",
        "m",
        "--version",
        "1",
        "--json",
        "-c",
        str(cfg),
        env=env,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)  # nothing but the command's output
    assert doc["model"] == "m" and doc["smoke_test"] is False
    lines = p.stderr.strip().splitlines()
    assert lines, "the warning went nowhere"
    if how == "text":
        assert any(re.match(r"^\S+ \S+ WARNING fleet\.registry: no smoke test", line) for line in lines), (
            lines
        )
    else:
        records = [json.loads(line) for line in lines]  # every stderr line is one JSON object
        warn = [r for r in records if r["logger"] == "fleet.registry"]
        assert warn and warn[0]["level"] == "warning" and "no smoke test" in warn[0]["msg"]
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", warn[0]["ts"])


def test_models_json_has_iso_timestamps(tmp_path: Path) -> None:
    out, cfg = make_convert_output(tmp_path / "conv"), _fleet_toml(tmp_path)
    assert (
        edgekit("fleet", "publish", str(out), "--model", "m", "--version", "1", "-c", str(cfg)).returncode
        == 0
    )
    p = edgekit("fleet", "models", "--json", "-c", str(cfg))
    rows = json.loads(p.stdout)
    assert len(rows) == 1 and isinstance(rows[0]["created"], float)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rows[0]["created_iso"])


@pytest.mark.parametrize("broken", ["dtype", "shape"])
def test_publish_refuses_card_without_dtype_or_shape(tmp_path: Path, broken: str) -> None:
    out, cfg = make_convert_output(tmp_path / "conv"), _fleet_toml(tmp_path)
    card = json.loads((out / "model_card.json").read_text())
    del card["inputs"][0][broken]
    (out / "model_card.json").write_text(json.dumps(card))
    p = edgekit("fleet", "publish", str(out), "--model", "m", "--version", "1", "--json", "-c", str(cfg))
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    first = p.stderr.strip().splitlines()[0]
    assert f"inputs.0.{broken}: Field required" in first
    models = edgekit("fleet", "models", "--json", "-c", str(cfg))
    assert json.loads(models.stdout) == []  # nothing was published


def test_python_m_edgekit_and_completion() -> None:
    v = edgekit("--version")
    assert v.returncode == 0 and v.stdout.startswith("edgekit ")
    comp = edgekit(env={"_EDGEKIT_COMPLETE": "complete_bash", "COMP_WORDS": "edgekit fle", "COMP_CWORD": "1"})
    assert comp.returncode == 0 and comp.stdout.split() == ["fleet"]
    script = edgekit("--show-completion", "bash")
    assert script.returncode == 0 and "_EDGEKIT_COMPLETE" in script.stdout


def test_bad_log_format_is_refused() -> None:
    p = edgekit("--log-format", "xml", "fleet", "--help")
    assert p.returncode == 2 and "xml" in p.stderr and "Traceback" not in p.stderr


def test_tables_not_cut_when_piped(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.table import Table

    from edgekit.log import stdout_console

    cells = [f"{'x' * 60}-{i}" for i in range(4)]
    t = Table(*[f"col{i}" for i in range(4)])
    t.add_row(*cells)
    stdout_console().print(t)
    text = capsys.readouterr().out
    assert "…" not in text
    row = next(line for line in text.splitlines() if cells[0] in line)
    assert all(c in row for c in cells)  # the whole row on one line, ~250 columns wide


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("sample", ["agent", "fleet"])
def test_sample_configs_have_only_known_keys(sample: str) -> None:
    """The shipped samples validate verbatim (agent.toml names files of a real box, so its
    only problems are those files)."""
    p = edgekit(sample, "check", "--config", str(ROOT / "deploy" / f"{sample}.toml"))
    lines = p.stdout.strip().splitlines()
    if sample == "fleet":
        assert p.returncode == 0 and lines == ["ok"], p.stdout
    else:
        assert all(re.match(r"^(agent\.root|mqtt\.(ca|cert|key)) /etc/edgekit/", line) for line in lines), (
            lines
        )


@pytest.mark.parametrize(
    ("kind", "field"), [("card", "inputs"), ("report", "artifacts"), ("manifest", "sequence")]
)
def test_schema_command(kind: str, field: str) -> None:
    p = edgekit("schema", kind)
    doc = json.loads(p.stdout)
    assert p.returncode == 0 and field in doc["required"] and doc["$schema"].endswith("2020-12/schema")


def test_card_schema_requires_dtype_and_shape() -> None:
    doc = json.loads(edgekit("schema", "card").stdout)
    assert {"name", "dtype", "shape"} <= set(doc["$defs"]["TensorSpec"]["required"])


def test_packaging_metadata() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    # PEP 639: an SPDX expression replaces the License :: classifiers (setuptools refuses both)
    assert project["classifiers"] and not any(c.startswith("License ::") for c in project["classifiers"])
