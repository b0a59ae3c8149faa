"""The start path stays light: `edgekit serve` and `edgekit agent run` import only what serving
needs (the CLI tree is lazy, httpx comes only with a cloud endpoint), and `edgekit --help`
still lists every command with its help text.

The imports are read from a real process: `python -X importtime -m edgekit.cli ...` started as
the bench starts it, stopped once /v2/health/ready answers.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from edgekit.cli import LAZY_COMMANDS
from tests.agent.conftest import EDGEKIT, REPO, free_port, wait_http

pytestmark = pytest.mark.timeout(180)

# What no serving process needs: the other parts' CLIs and the converters' heavy toolchains.
NEVER = ("fleet", "converters", "targets.cli", "tensorflow", "torch", "coremltools")
# ...and what `edgekit serve` (no cloud endpoint, no updates) does not need either.
NOT_FOR_SERVE = (*NEVER, "httpx", "rich", "websockets", "typer.rich_utils")


def _imported(stderr: str) -> set[str]:
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", stderr, re.MULTILINE))


def _offenders(mods: set[str], banned: tuple[str, ...]) -> list[str]:
    return sorted(m for m in mods if any(m == b or m.startswith(b + ".") for b in banned))


def _imports_until_ready(args: list[str], port: int) -> set[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-X", "importtime", *EDGEKIT[1:], *args]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", timeout=60, proc=proc)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    mods = _imported(err)
    assert "onnxruntime" in mods, err[-2000:]  # the parse found the real imports
    return mods


def test_edgekit_serve_imports_only_what_serving_needs(model_dir: Path) -> None:
    port = free_port()
    mods = _imports_until_ready(["serve", str(model_dir / "cls_v1.onnx"), "--port", str(port)], port)
    assert _offenders(mods, NOT_FOR_SERVE) == []


def test_agent_run_imports_no_other_part(model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[agent]\ndevice = "d1"\ndata_dir = "{tmp_path / "data"}"\n'
        f"[server]\nport = {port}\n[mqtt]\nenabled = false\n"
        f'[models.cls]\npath = "{model_dir / "cls_v1.onnx"}"\npolicy = "local-only"\n'
    )
    mods = _imports_until_ready(["agent", "run", "--config", str(cfg)], port)
    assert _offenders(mods, NEVER) == []


def test_help_lists_every_command_with_its_help() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    out = subprocess.run([*EDGEKIT, "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = re.findall(r"^│ (\w+)\s{2,}(\S.*?)\s*│$", out.stdout, re.MULTILINE)
    names = [n for n, _ in listed]
    assert names[:2] == ["demo", "schema"]
    assert names[2:] == list(LAZY_COMMANDS)
    helps = dict(listed)
    assert helps["serve"].startswith("Serve model files over the Open Inference Protocol")
    assert helps["fleet"] and helps["agent"] and helps["convert"]


def test_lazy_table_names_what_each_part_registers() -> None:
    """The routing table in edgekit/cli.py against the parts' own register(): a command a part
    adds but the table misses would vanish from `edgekit`."""
    for module in sorted(set(LAZY_COMMANDS.values())):
        part = typer.Typer()
        importlib.import_module(module).register(part)
        registered = set(typer.main.get_group(part).commands)
        assert registered == {n for n, m in LAZY_COMMANDS.items() if m == module}, module


def test_a_lazy_command_runs_and_an_unknown_one_is_refused() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ok = subprocess.run(
        [*EDGEKIT, "agent", "check", "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0 and "--config" in ok.stdout, ok.stderr
    bad = subprocess.run([*EDGEKIT, "serv"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "No such command 'serv'. Did you mean 'serve'?" in bad.stderr
