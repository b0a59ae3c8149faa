"""`edgekit demo`: the whole path on embedded defaults, in one process tree cleaned up on exit.

convert (int8 for the edge, fp32 for the cloud) -> fleet server (embedded broker, SQLite, artifact
HTTP) + cloud endpoint (`edgekit serve`) -> 3 agents, each enrolled by the demo itself
(`edgekit fleet devices enroll`: the broker admits no one else) -> publish + 2-wave rollout -> inference on
every agent (local), then forced fallbacks (a low-confidence input; an agent whose local model was
unloaded) answered by the cloud -> summary. Every step is checked; the exit code is 0 only if
every step really happened.
"""

from __future__ import annotations

import json
import secrets
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edgekit.launch import run_cli
from edgekit.scenarios.harness import MODEL, SAMPLES_DIR, AgentSpec, DemoError, Harness
from edgekit.scenarios.harness import check as _check

FLEET = "demo"
AGENTS = [
    AgentSpec("store-berlin-1", {"kind": "store-pc", "site": "berlin"}),
    AgentSpec("store-paris-2", {"kind": "store-pc", "site": "paris"}),
    AgentSpec("arm-box-3", {"kind": "arm-box", "site": "paris"}),
]
EDGE_ARTIFACT = "onnx-int8-static"  # the manifest's artifact key for the calibrated int8 ONNX
CONFIDENCE = 0.9  # below this top-1 probability, an agent asks the cloud (hard-example routing)
__all__ = ["DemoError", "run_demo"]


@dataclass
class AgentStats:
    device: str
    version: str = "-"
    local: int = 0
    cloud: int = 0
    correct: int = 0
    total: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    fallbacks: dict[str, int] = field(default_factory=dict)


def infer(client: httpx.Client, port: int, x: np.ndarray) -> tuple[dict[str, Any], float]:
    """One OIP request over a kept-alive connection, as a POS app talking to its local agent would
    (a new httpx client per request costs ~20 ms of TLS-context set-up, even for plain HTTP)."""
    doc = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }
    t0 = time.perf_counter()
    r = client.post(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", json=doc)
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise DemoError(f"inference on :{port} returned {r.status_code}: {r.text[:200]}")
    return r.json(), ms


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _unsure_input(model: Path, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Blend pairs of digits until the edge model's top-1 probability is below CONFIDENCE."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    blends = np.stack([0.5 * x[i] + 0.5 * x[i + 1] for i in range(0, 200, 2)]).astype(np.float32)
    conf = _softmax(sess.run(None, {"input": blends})[0]).max(axis=1)
    i = int(conf.argmin())
    _check(conf[i] < CONFIDENCE, f"no low-confidence input found (min {conf[i]:.3f})")
    return blends[i : i + 1], float(conf[i])


def run_demo(workdir: Path | None, console: Console, requests_per_agent: int = 50) -> dict[str, Any]:
    from fleet.cli import rollout_table

    work = Path(workdir or tempfile.mkdtemp(prefix="edgekit-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    t_start = time.perf_counter()
    summary: dict[str, Any] = {"workdir": str(work), "steps": {}}

    # 1. convert: int8 (static, calibrated) for the edge, fp32 for the cloud; both validated.
    console.rule("1. convert")
    conv = work / "convert"
    proc = run_cli(
        "convert",
        "sample:digits",
        "-t",
        "onnx",
        "-q",
        "none",
        "-q",
        "int8",
        "--max-drop",
        "1.0",
        "--out",
        str(conv),
        "--json",
    )
    if proc.returncode != 0:
        raise DemoError(f"conversion failed:\n{proc.stderr[-2000:]}{proc.stdout[-2000:]}")
    report = json.loads(proc.stdout)
    for a in report["artifacts"]:
        console.print(
            f"  {a['target']} {a['precision']:<12} {a['status']:<4} {a['bytes'] / 1024:7.1f} KiB  "
            f"cosine {a['cosine']:.6f}  top-1 {a['top1']:.4f} (drop {a['top1_drop_pts']:+.2f} pt)"
        )
    _check(report["ok"], "every artifact validated")
    summary["steps"]["convert"] = {a["precision"]: a["top1"] for a in report["artifacts"]}

    agent_admin_token = secrets.token_urlsafe(24)  # step 5 unloads a model: a repository route
    harness = Harness(
        work,
        console,
        fleet=FLEET,
        agents=AGENTS,
        agent_models={MODEL: {"policy": "local-first", "confidence_threshold": CONFIDENCE}},
        heartbeat_s=2.0,
        formats=[EDGE_ARTIFACT, "onnx"],  # int8 when offered, fp32 otherwise
        agent_extra={"server": {"admin_token": agent_admin_token}},
    )
    with harness as h, httpx.Client(timeout=10) as client:
        # 2. fleet server on embedded defaults, and the cloud endpoint with the fp32 model.
        console.rule("2. fleet server + cloud endpoint")
        h.start_fleet(cloud_model=conv / "onnx" / "model.onnx")

        # 3. agents, each with its own state directory and labels, and its own enrolment bundle
        # (MQTT credentials + root.json, issued by `edgekit fleet devices enroll` in step 2): the
        # embedded broker admits no one else.
        console.rule("3. agents")
        agents = [(a.device, a.port, a.svc) for a in h.start_agents()]

        # 4. publish and roll out in two waves.
        console.rule("4. publish + rollout")
        h.publish(conv, "1.0.0")
        st = h.start_rollout("1.0.0", waves=[33, 100])
        rid = st["id"]
        with Live(rollout_table(st), console=console, refresh_per_second=4) as live:
            st = h.wait_rollout(rid, timeout=180, on_poll=lambda s: live.update(rollout_table(s)))
        console.print()
        _check(st["state"] == "completed", f"rollout {rid} completed (it is {st['state']}: {st['reason']})")
        _check(st["totals"]["active"] == len(AGENTS), "every device active after the rollout")
        summary["steps"]["rollout"] = {"id": rid, "state": st["state"], "waves": len(st["waves"])}
        # What each box really runs: the active blob's sha256, mapped back to the conversion report.
        precision_of = {a["sha256"]: a["precision"] for a in report["artifacts"]}
        running = {}
        for device, port, _ in agents:
            status = client.get(f"http://127.0.0.1:{port}/agent/status").json()
            running[device] = precision_of.get(status["models"][MODEL]["sha256"], "unknown")
            _check(
                running[device] == "int8-static",
                f"{device} runs the int8 artifact (it runs {running[device]})",
            )

        # 5. inference: local answers, then forced fallbacks answered by the cloud.
        console.rule("5. inference")
        ev = np.load(SAMPLES_DIR / "digits_eval.npz")
        x, y = ev["input"], ev["labels"]
        stats = {d: AgentStats(d) for d, _, _ in agents}
        for device, port, _ in agents:
            s = stats[device]
            for i in range(requests_per_agent):
                body, ms = infer(client, port, x[i : i + 1])
                p = body["parameters"]
                s.total += 1
                s.latencies_ms.append(ms)
                s.correct += int(np.argmax(body["outputs"][0]["data"]) == y[i])
                if p["served_by"] == "local":
                    s.local += 1
                    s.version = p["model_version"]
                else:
                    s.cloud += 1
                    s.fallbacks[p["fallback_reason"]] = s.fallbacks.get(p["fallback_reason"], 0) + 1
            _check(s.local > 0, f"{device} answered locally")
            console.print(f"  {device}: {s.local} local, {s.cloud} cloud, top-1 {s.correct / s.total:.3f}")

        edge_model = conv / "onnx" / "model_int8.onnx"
        unsure, conf = _unsure_input(edge_model, x)
        dev0, port0, _ = agents[0]
        body, ms = infer(client, port0, unsure)
        p = body["parameters"]
        console.print(
            f"  {dev0}: blended digit, local confidence {conf:.2f} -> served_by={p['served_by']}"
            f" ({p.get('fallback_reason')})"
        )
        _check(
            (p["served_by"], p.get("fallback_reason")) == ("cloud", "low_confidence"),
            "a low-confidence input was answered by the cloud",
        )
        stats[dev0].cloud += 1
        stats[dev0].fallbacks["low_confidence"] = stats[dev0].fallbacks.get("low_confidence", 0) + 1

        dev2, port2, _ = agents[2]
        r = client.post(
            f"http://127.0.0.1:{port2}/v2/repository/models/{MODEL}/unload",
            headers={"Authorization": f"Bearer {agent_admin_token}"},
        )
        _check(r.status_code == 200, f"{dev2} unloaded its local model")
        for i in range(5):
            body, ms = infer(client, port2, x[i : i + 1])
            p = body["parameters"]
            _check(
                (p["served_by"], p.get("fallback_reason")) == ("cloud", "missing_model"),
                f"{dev2} without a local model was answered by the cloud",
            )
            stats[dev2].cloud += 1
            stats[dev2].fallbacks["missing_model"] = stats[dev2].fallbacks.get("missing_model", 0) + 1
        console.print(f"  {dev2}: local model unloaded -> 5/5 answered by the cloud (missing_model)")

        # 6. summary: the fleet's view next to what each agent served.
        devices = h.devices()
    summary["agents"] = []
    table = Table(
        title=f"edgekit demo: {len(AGENTS)} devices, {MODEL} 1.0.0 (int8 at the edge, fp32 in the cloud)"
    )
    for c in (
        "device",
        "labels",
        "fleet state",
        "version",
        "artifact",
        "local",
        "cloud",
        "fallback reasons",
        "p50 ms",
        "top-1",
    ):
        table.add_column(c)
    for device, _, _ in agents:
        s, d = stats[device], devices.get(device, {})
        p50 = statistics.median(s.latencies_ms)
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(s.fallbacks.items())) or "-"
        labels = ",".join(f"{k}={v}" for k, v in sorted(d.get("labels", {}).items()))
        table.add_row(
            device,
            labels,
            str(d.get("state")),
            str(d.get("active_version")),
            running[device],
            str(s.local),
            str(s.cloud),
            reasons,
            f"{p50:.2f}",
            f"{s.correct / s.total:.3f}",
        )
        summary["agents"].append(
            {
                "device": device,
                "state": d.get("state"),
                "version": d.get("active_version"),
                "artifact": running[device],
                "local": s.local,
                "cloud": s.cloud,
                "fallbacks": s.fallbacks,
                "p50_ms": p50,
                "top1": s.correct / s.total,
            }
        )
    console.print(table)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    console.print(f"demo finished in {summary['seconds']} s; logs in {logs}")
    return summary
