"""`edgekit demo --scenario NAME`: one flow of issue 13 end to end, checked, on embedded defaults.

A scenario is a module with `ABOUT` (one line), optionally `setup(h: Harness, cache: Path)`
(run before the agents start), `AGENTS` (its own devices and labels instead of the default two)
and `AGENT_CONFIG` (extra agent config sections, e.g. {"agent": {"shadow_sample": 1.0}}),
and `run(h: Harness, cache: Path) -> dict`: it gets a started
fleet and agents (edgekit.scenarios.harness), drives its flow, checks the outcome
with `check`/`wait_for` (a failed check is exit code 1) and returns the facts for the summary.
Adding one is a module here plus a line in SCENARIOS.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console

from edgekit.scenarios.harness import AgentSpec, DemoError, ExternalBroker, Harness, local_mosquitto

# name -> module; imported only when chosen
SCENARIOS: dict[str, str] = {
    "gate-abort": "edgekit.scenarios.gate_abort",
    "delta": "edgekit.scenarios.delta",
    "provenance": "edgekit.scenarios.provenance",
    "drift": "edgekit.scenarios.drift",
    "shadow-canary": "edgekit.scenarios.shadow_canary",
}
AGENTS = [
    AgentSpec("store-berlin-1", {"kind": "store-pc", "site": "berlin"}),
    AgentSpec("arm-box-2", {"kind": "arm-box", "site": "paris"}),
]
BROKERS = ("embedded", "mosquitto")


def load(name: str) -> ModuleType:
    if name not in SCENARIOS:
        raise DemoError(f"unknown scenario {name!r}; choose one of: {', '.join(SCENARIOS)}")
    return importlib.import_module(SCENARIOS[name])


def run_scenario(
    name: str,
    workdir: Path | None,
    console: Console,
    *,
    broker: str | ExternalBroker = "embedded",
    cache: Path | None = None,
) -> dict[str, Any]:
    """Start a fresh fleet and agents under `workdir`, run scenario `name`, stop everything.
    `broker`: "embedded", "mosquitto" (started here) or an ExternalBroker someone else runs.
    `cache`: where conversions are kept for reuse (default: workdir/cache)."""
    module = load(name)
    if isinstance(broker, str) and broker not in BROKERS:
        raise DemoError(f"unknown broker {broker!r}; choose one of: {', '.join(BROKERS)}")
    work = Path(workdir or tempfile.mkdtemp(prefix=f"edgekit-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = cache or work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    console.rule(f"scenario {name}: {module.ABOUT}")
    chosen = local_mosquitto if broker == "mosquitto" else None if broker == "embedded" else broker
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh fleet each time; the cache stays
    agents = getattr(module, "AGENTS", AGENTS)
    extra = getattr(module, "AGENT_CONFIG", None)
    with Harness(run_dir, console, fleet="demo", agents=agents, broker=chosen, agent_extra=extra) as h:
        h.start_fleet()
        if hasattr(module, "setup"):  # what must be in place before the agents connect
            module.setup(h, cache)
        h.start_agents()
        result = module.run(h, cache)
    return {
        "scenario": name,
        "ok": True,
        "broker": "embedded" if broker == "embedded" else "mosquitto",
        "workdir": str(work),
        **result,
        "seconds": round(time.perf_counter() - t0, 1),
    }
