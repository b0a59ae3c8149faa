"""deploy/*.service: hardened (systemd-analyze security <= 2.0), valid (systemd-analyze verify
prints nothing), Type=notify with a watchdog, and a Documentation= the install steps put in place."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = sorted((REPO / "deploy").glob("*.service"))
INSTALLED_EDGEKIT = "/opt/edgekit/venv/bin/edgekit"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze missing: `apt-get install systemd` (scripts/system-deps.sh)"
)


def _exposure(unit: Path) -> float:
    p = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", p.stdout + p.stderr)
    assert m, f"no exposure level in:\n{p.stdout}\n{p.stderr}"
    return float(m.group(1))


def test_both_units_exist() -> None:
    assert {u.name for u in UNITS} == {"edgekit-agent.service", "edgekit-fleet.service"}


@needs_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_exposure_score_at_most_2(unit: Path) -> None:
    assert _exposure(unit) <= 2.0


@needs_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_verify_is_clean(unit: Path, tmp_path: Path) -> None:
    """verify also checks that ExecStart exists: point it at this checkout's edgekit instead of
    the install path. Unknown keys and bad values only warn (exit 0), so any output is a failure."""
    edgekit = Path(sys.executable).parent / "edgekit"
    assert edgekit.exists(), "the edgekit console script of this venv"
    text = unit.read_text()
    assert INSTALLED_EDGEKIT in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace(INSTALLED_EDGEKIT, str(edgekit)))
    p = subprocess.run([ANALYZE, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), p.stdout + p.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_notify_watchdog_and_documentation(unit: Path) -> None:
    text = unit.read_text()
    keys = dict(re.findall(r"^(Type|WatchdogSec|NotifyAccess|Documentation)=(.*)$", text, re.M))
    assert keys["Type"] == "notify" and keys["NotifyAccess"] == "main"
    assert int(keys["WatchdogSec"]) > 0
    # Documentation= names a file the unit's own install steps put there, from this repository.
    doc = keys["Documentation"]
    assert doc.startswith("file:///usr/share/doc/edgekit/"), doc
    name = doc.rsplit("/", 1)[1]
    assert (REPO / "docs" / name).is_file()
    install = re.search(r"install -Dm644 -t /usr/share/doc/edgekit (.*?)\s+\(", text)
    assert install and f"docs/{name}" in install.group(1).split()
