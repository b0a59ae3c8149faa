"""Shadow canary cost, one command: `.venv/bin/python bench/shadow.py [--json] [--n N]`.

What mirroring requests to a shadow version costs the requests the active version answers:
  p50_ratio_shadow_50pct   p50 of the active model's HTTP responses with a shadow loaded and
                           `shadow_sample = 0.5`, over the p50 with no shadow (goal <= 1.1)
  p95_ratio_shadow_50pct   the same at p95 (no goal: reported so the tail is seen too)
  mirrored / dropped       what the shadow's worker compared and what its full queue dropped
                           (agent.shadow: the bound on its CPU share), from /agent/status
Both sides are `edgekit agent run` subprocesses (MQTT off) serving the same small CNN
(4 strided convolutions, 3x96x96 input, ~0.2 M params, fixed seed); the shadow agent's store
also names a perturbed copy as the model's shadow, as a shadow manifest leaves it
(agent.store: the pointer's "shadow" entry). One sequential keep-alive client (binary tensors)
alternates blocks of requests between the two, so drift on the box hits both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

INPUT_SHAPE = (1, 3, 96, 96)
INPUTS = 16
PERTURB = 0.02  # relative weight noise of the shadow version


def small_cnn(path: Path, seed: int = 0, perturb: float = 0.0) -> Path:
    """A CNN-size classifier: 4 strided 3x3 convs (3->16->32->64->128), global pool, 10 classes.
    `perturb` adds relative noise to every weight: the shadow's 'retrained' version."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    noise = np.random.default_rng(seed + 1)
    nodes, inits = [], []
    x, cin = "input", 3
    for i, cout in enumerate((16, 32, 64, 128)):
        w = rng.normal(0, (2.0 / (cin * 9)) ** 0.5, (cout, cin, 3, 3)).astype(np.float32)
        w *= 1 + perturb * noise.standard_normal(w.shape).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[2, 2]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        x, cin = f"r{i}", cout
    fc = rng.normal(0, 0.1, (cin, 10)).astype(np.float32)
    fc *= 1 + perturb * noise.standard_normal(fc.shape).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc"), numpy_helper.from_array(np.zeros(10, np.float32), "fcb")]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 96, 96])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def agent_dir(work: Path, name: str, active: Path, shadow: Path | None, sample: float, port: int) -> Path:
    """A data dir whose store serves `active` (and names `shadow` as its shadow), and its config."""
    from agent.store import Entry, ModelStore

    d = work / name
    store = ModelStore(d / "data" / "store")
    digest, _ = store.add_file(active)
    store.activate("cnn", Entry(version="1", sha256=digest, format="onnx"))
    if shadow is not None:
        sdigest, _ = store.add_file(shadow)
        store.set_shadow("cnn", Entry(version="2", sha256=sdigest, format="onnx"))
    cfg = d / "agent.toml"
    cfg.write_text(
        f'[agent]\ndevice = "bench-{name}"\ndata_dir = "{d / "data"}"\nshadow_sample = {sample}\n'
        f"[server]\nport = {port}\n[mqtt]\nenabled = false\n"
    )
    return cfg


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agent(cfg: Path, port: int) -> tuple[subprocess.Popen, str]:
    import httpx

    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli", "agent", "run", "--config", str(cfg)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode} ({cfg})")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=0.5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    proc.kill()
    raise TimeoutError(url)


def measure(n: int, block: int, seed: int) -> dict[str, float]:
    import httpx

    from agent.oip import HEADER_LENGTH, encode_request

    rng = np.random.default_rng(seed)
    bodies = []  # a few distinct inputs, so top-1 agreement is a share, not all or nothing
    for _ in range(INPUTS):
        body, hlen = encode_request(
            {"input": rng.standard_normal(INPUT_SHAPE).astype(np.float32)}, binary=True
        )
        bodies.append((body, {HEADER_LENGTH: str(hlen), "Content-Type": "application/octet-stream"}))
    procs = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-shadow-") as tmp:
        work = Path(tmp)
        active = small_cnn(work / "active.onnx", seed)
        shadow = small_cnn(work / "shadow.onnx", seed, perturb=PERTURB)
        try:
            urls = {}
            for side, sh in (("base", None), ("shadow", shadow)):
                port = free_port()
                cfg = agent_dir(work, side, active, sh, 0.5, port)
                proc, urls[side] = start_agent(cfg, port)
                procs.append(proc)
            lat: dict[str, list[float]] = {"base": [], "shadow": []}
            clients = {s: httpx.Client(base_url=u, timeout=30) for s, u in urls.items()}
            for c in clients.values():  # warm both: connections, arenas, the shadow worker
                for i in range(30):
                    body, headers = bodies[i % INPUTS]
                    assert c.post("/v2/models/cnn/infer", content=body, headers=headers).status_code == 200
            done = 0
            while done < n:
                for side, c in clients.items():
                    for i in range(block):
                        body, headers = bodies[i % INPUTS]
                        t0 = time.perf_counter()
                        r = c.post("/v2/models/cnn/infer", content=body, headers=headers)
                        lat[side].append(time.perf_counter() - t0)
                        assert r.status_code == 200, r.text
                done += block
            status = clients["shadow"].get("/agent/status").json()
            for c in clients.values():
                c.close()
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
    stats = status["shadow"][0]
    base, mirrored = np.array(lat["base"]), np.array(lat["shadow"])
    return {
        "p50_ratio_shadow_50pct": float(np.median(mirrored) / np.median(base)),
        "p95_ratio_shadow_50pct": float(np.percentile(mirrored, 95) / np.percentile(base, 95)),
        "p50_ms_no_shadow": float(np.median(base) * 1000),
        "p50_ms_shadow_50pct": float(np.median(mirrored) * 1000),
        "requests_per_side": n,
        "mirrored": stats["requests"],
        "dropped": stats["dropped"],
        "shadow_latency_ratio": stats["latency_ratio"],
        "shadow_top1_agreement": stats["top1_agreement"],
        "cpu_count": os.cpu_count() or 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON line")
    ap.add_argument("--n", type=int, default=1000, help="requests per side (default 1000)")
    ap.add_argument("--block", type=int, default=50, help="requests per side before switching")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    res = measure(a.n, a.block, a.seed)
    if a.json:
        print(json.dumps(res))
        return
    for k, v in res.items():
        print(f"{k:28s} {v:.3f}" if isinstance(v, float) else f"{k:28s} {v}")
    print(
        f"goal: p50_ratio_shadow_50pct <= 1.1 -> {'ok' if res['p50_ratio_shadow_50pct'] <= 1.1 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
