"""fleet.toml as a typed model, `fleet check`, and the dict loader `edgekit serve` uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.config import load_config
from edgekit.errors import ConfigError
from edgekit.settings import ConfigProblems
from fleet import config as fleet_config


def _fleet_check(cfg: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgekit", "fleet", "check", "--config", str(cfg), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def test_fleet_env_values_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_BROKER__PASSWORD", "123456")
    monkeypatch.setenv("EDGEKIT_SERVER__FLEET", "1001")
    monkeypatch.setenv("EDGEKIT_BROKER__EMBEDDED", "false")
    monkeypatch.setenv("EDGEKIT_SERVER__STATE_DIR", str(tmp_path))
    cfg = fleet_config.load(None)
    assert cfg["broker"]["password"] == "123456" and cfg["server"]["fleet"] == "1001"
    assert cfg["broker"]["embedded"] is False and fleet_config.state_dir(cfg) == tmp_path
    assert cfg["broker"]["client_id"] == "edgekit-fleet-1001"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[broker]\nhots = 'x'\n", "broker.hots: unknown key (did you mean host?)"),
        ("[servre]\nfleet = 'x'\n", "servre: unknown key (did you mean server?)"),
        ("[http]\nport = 'notanumber'\n", "http.port: Input should be a valid integer"),
        ("[http]\nport = 70000\n", "http.port: Input should be less than or equal to 65535"),
        ("[server]\nfleet = 'a/b'\n", "server.fleet: Value error, invalid fleet"),
        ("_env_file = '/etc/passwd'\n", "_env_file: unknown key"),
    ],
)
def test_fleet_bad_keys_named(tmp_path: Path, text: str, expected: str) -> None:
    p = tmp_path / "fleet.toml"
    p.write_text(text)
    with pytest.raises(ConfigProblems) as e:
        fleet_config.load(p)
    assert any(expected in line for line in e.value.problems), e.value.problems


def test_fleet_defaults_match_an_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "fleet.toml"
    p.write_text("")
    loaded = fleet_config.load(p)
    for section, values in fleet_config.DEFAULTS.items():
        for key, value in values.items():
            if value not in ("", None):  # empty ones are filled (state_dir, client_id, public_url)
                assert loaded[section][key] == value, (section, key)


def test_fleet_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'[server]\nfleet = "f1"\nstate_dir = "{tmp_path / "state"}"\n')
    ok = _fleet_check(good)
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[broker]\nhots = 'x'\ntls = true\ncert = '/nonexistent/cert.pem'\n[servre]\n")
    p = _fleet_check(bad)
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 2 and "Traceback" not in p.stderr, (p.stdout, p.stderr)
    doc = json.loads(_fleet_check(bad, "--json").stdout)
    assert doc == {"ok": False, "problems": lines}
    # once the keys are right, the files they name are checked
    bad.write_text("[broker]\ntls = true\ncert = '/nonexistent/cert.pem'\n")
    p = _fleet_check(bad)
    assert p.returncode == 2 and p.stdout.strip() == "broker.cert /nonexistent/cert.pem: no such file"
    assert not (tmp_path / "state").exists()


def test_dict_loader_types_env_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """`edgekit serve` reads [server] from the environment with load_config: a token of digits
    stays a string, a number is parsed, a bad number is named."""
    defaults = {"server": {"admin_token": "", "port": 8080, "max_body_mb": 64.0, "enabled": True}}
    monkeypatch.setenv("EDGEKIT_SERVER__ADMIN_TOKEN", "1e5123456789012345678901234")
    monkeypatch.setenv("EDGEKIT_SERVER__PORT", "9000")
    monkeypatch.setenv("EDGEKIT_SERVER__ENABLED", "off")
    cfg = load_config(None, defaults)
    assert cfg["server"] == {
        "admin_token": "1e5123456789012345678901234",
        "port": 9000,
        "max_body_mb": 64.0,
        "enabled": False,
    }
    monkeypatch.setenv("EDGEKIT_SERVER__PORT", "eighty")
    with pytest.raises(ConfigError, match="EDGEKIT_SERVER__PORT"):
        load_config(None, defaults)
