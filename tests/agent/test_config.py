"""The shipped sample config loads, and env overrides work."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_agent_config
from agent.daemon import _policy
from edgekit.errors import ConfigError

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "agent.toml"


def test_sample_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_MQTT__HOST", "broker.local")
    monkeypatch.setenv("EDGEKIT_CLOUD__TIMEOUT_MS", "500")
    cfg = load_agent_config(SAMPLE)
    assert cfg["agent"]["device"] == "store-042"
    assert cfg["mqtt"]["host"] == "broker.local" and cfg["cloud"]["timeout_ms"] == 500
    pol = _policy(cfg["models"]["digits"], cfg["fallback"])
    assert pol.mode == "local-first" and pol.confidence_threshold == 0.6 and pol.local_deadline_ms == 50


def test_bad_policy_refused(tmp_path: Path) -> None:
    p = tmp_path / "a.toml"
    p.write_text('[agent]\ndevice="d"\n[mqtt]\nenabled=false\n[models.x]\npolicy="cloud-maybe"\n')
    with pytest.raises(ConfigError, match="cloud-maybe"):
        load_agent_config(p)
