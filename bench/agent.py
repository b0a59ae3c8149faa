"""Agent benchmark, one command: `.venv/bin/python bench/agent.py [--quick]`.

Prints, measured in the same run on this machine:
  1. in-process Engine.infer latency / bare onnxruntime session.run latency (goal <= 1.05)
  2. HTTP p50 overhead in ms over bare compute (goal <= 1 ms), via `edgekit serve` in a subprocess
  3. p99 during hot swaps vs steady p99 (goal <= 2x)
  4. RSS of `edgekit agent run` with a MobileNetV2-size model loaded (goal <= 150 MB)
  5. time from process start to /v2/health/ready (goal <= 1 s)
The MobileNetV2-size model (3.5 M params, 224x224x3, random weights) is built with onnx.helper.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# --- model ----------------------------------------------------------------------------------
def mobilenet_v2(path: Path, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    n = [0]

    def name(p: str) -> str:
        n[0] += 1
        return f"{p}{n[0]}"

    def conv(x: str, cin: int, cout: int, k: int, s: int, group: int = 1, act: bool = True) -> str:
        w = name("w")
        fan_in = cin // group * k * k
        inits.append(
            numpy_helper.from_array(
                (rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(1.0 / fan_in)).astype(np.float32),
                w,
            )
        )
        b = name("b")
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), b))
        y = name("conv")
        nodes.append(
            helper.make_node(
                "Conv", [x, w, b], [y], kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4, group=group
            )
        )
        if not act:
            return y
        z = name("relu6")
        nodes.append(helper.make_node("Clip", [y, "zero", "six"], [z]))
        return z

    inits += [
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6, np.float32), "six"),
    ]
    x = conv("input", 3, 32, 3, 2)
    cin = 32
    for t, c, reps, s in [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]:
        for i in range(reps):
            stride = s if i == 0 else 1
            h = conv(x, cin, cin * t, 1, 1) if t != 1 else x
            h = conv(h, cin * t, cin * t, 3, stride, group=cin * t)
            h = conv(h, cin * t, c, 1, 1, act=False)
            if stride == 1 and cin == c:
                y = name("add")
                nodes.append(helper.make_node("Add", [x, h], [y]))
                h = y
            x, cin = h, c
    x = conv(x, cin, 1280, 1, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    inits.append(
        numpy_helper.from_array((rng.standard_normal((1280, 1000)) * 0.03).astype(np.float32), "fcw")
    )
    inits.append(numpy_helper.from_array(np.zeros(1000, np.float32), "fcb"))
    nodes.append(helper.make_node("Gemm", ["flat", "fcw", "fcb"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    graph = helper.make_graph(
        nodes,
        "mobilenet_v2_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def tiny(path: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.agent.models import classifier

    return classifier(path)


# --- helpers ----------------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> float:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=0.5).status_code == 200:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.005)
    raise TimeoutError(url)


def binary_request(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    from agent.oip import HEADER_LENGTH, encode_request

    body, hlen = encode_request({"input": x}, binary=True)
    return body, {HEADER_LENGTH: str(hlen), "Content-Type": "application/octet-stream"}


# --- 1. in-process ------------------------------------------------------------------------------
def bench_inprocess(model_path: Path, x: np.ndarray, n: int) -> dict[str, float]:
    from agent import fallback as fb
    from agent.engine import Engine
    from agent.models import ModelRegistry, load_model

    reg = ModelRegistry()
    m = load_model("m", model_path, "1")
    reg.put(m)
    sess = m.runtime.session
    out_names = [o.name for o in sess.get_outputs()]
    res = {}
    for mode in (fb.LOCAL_ONLY, fb.LOCAL_FIRST):
        eng = Engine(reg, default_policy=fb.Policy(mode=mode))
        feeds = {"input": x}
        for _ in range(10):
            sess.run(out_names, feeds)
            eng.infer("m", feeds)
        bare, agent = [], []
        for _ in range(n):  # interleaved so drift hits both sides equally
            t0 = time.perf_counter()
            sess.run(out_names, feeds)
            t1 = time.perf_counter()
            eng.infer("m", feeds)
            t2 = time.perf_counter()
            bare.append(t1 - t0)
            agent.append(t2 - t1)
        res[mode] = statistics.median(agent) / statistics.median(bare)
        res["bare_ms"] = statistics.median(bare) * 1000
        eng.close()
    return res


# --- 2. HTTP overhead -----------------------------------------------------------------------------
def bench_http(model_path: Path, x: np.ndarray, n: int) -> dict[str, float]:
    import httpx

    from agent.models import load_model

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli", "serve", str(model_path), "--name", "m", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        m = load_model("m", model_path, "1")
        sess = m.runtime.session
        body, headers = binary_request(x)
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(20):
                assert c.post("/v2/models/m/infer", content=body, headers=headers).status_code == 200
            http, bare = [], []
            for _ in range(n):
                t0 = time.perf_counter()
                c.post("/v2/models/m/infer", content=body, headers=headers)
                t1 = time.perf_counter()
                sess.run(None, {"input": x})
                t2 = time.perf_counter()
                http.append(t1 - t0)
                bare.append(t2 - t1)
        return {
            "http_p50_ms": pct(http, 50) * 1000,
            "bare_p50_ms": pct(bare, 50) * 1000,
            "overhead_ms": (pct(http, 50) - pct(bare, 50)) * 1000,
        }
    finally:
        proc.terminate()
        proc.wait(10)


# --- 3. hot swap p99 ------------------------------------------------------------------------------
def _load_client(url: str, body: bytes, headers: dict[str, str], seconds: float, q) -> None:
    import httpx

    lat, errors = [], 0
    with httpx.Client(base_url=url, timeout=30) as c:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            r = c.post("/v2/models/m/infer", content=body, headers=headers)
            lat.append(time.perf_counter() - t0)
            errors += r.status_code != 200
    q.put((lat, errors))


def bench_hotswap(model_a: Path, model_b: Path, x: np.ndarray, seconds: float) -> dict[str, float]:
    from agent import fallback as fb
    from agent.engine import Engine
    from agent.models import ModelRegistry, load_model
    from agent.server import ServerThread, build_app

    reg = ModelRegistry()
    reg.put(load_model("m", model_a, "a"))
    eng = Engine(reg, default_policy=fb.Policy(mode=fb.LOCAL_ONLY))
    srv = ServerThread(build_app(eng)).start()
    body, headers = binary_request(x)
    ctx = mp.get_context("spawn")
    try:

        def window(swap_every: float | None) -> tuple[list[float], int, int]:
            q = ctx.Queue()
            p = ctx.Process(target=_load_client, args=(srv.url, body, headers, seconds, q))
            p.start()
            swaps = 0
            if swap_every:
                time.sleep(0.3)
                end = time.monotonic() + seconds - 0.6
                while time.monotonic() < end:
                    # what an update does: load the new version next to the old, then swap the reference
                    reg.put(load_model("m", model_b if swaps % 2 == 0 else model_a, f"v{swaps}"))
                    swaps += 1
                    time.sleep(swap_every)
            lat, errors = q.get(timeout=seconds + 60)
            p.join(30)
            return lat, errors, swaps

        window(None)  # warm-up (client process start, first connections)
        steady, e1, _ = window(None)
        swapping, e2, swaps = window(0.5)
        return {
            "steady_p99_ms": pct(steady, 99) * 1000,
            "swap_p99_ms": pct(swapping, 99) * 1000,
            "ratio": pct(swapping, 99) / pct(steady, 99),
            "swaps": swaps,
            "errors": e1 + e2,
            "requests": len(steady) + len(swapping),
        }
    finally:
        srv.stop()
        eng.close()


# --- 4 + 5. RSS and time to ready of the daemon -----------------------------------------------------
def bench_daemon(model_path: Path, work: Path) -> dict[str, float]:
    import httpx
    import psutil

    port = free_port()
    cfg = work / "agent.toml"
    cfg.write_text(
        f'[agent]\ndevice = "bench"\ndata_dir = "{work / "data"}"\n'
        f"[server]\nport = {port}\n[mqtt]\nenabled = false\n"
        f'[models.m]\npath = "{model_path}"\npolicy = "local-only"\n'
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "edgekit.cli", "agent", "run", "--config", str(cfg)]
    out = {}
    for run in ("first", "warm"):  # first run copies the model into the store
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready = wait_ready(f"http://127.0.0.1:{port}", proc)
            out[f"ready_s_{run}"] = ready - t0
            body, headers = binary_request(np.zeros((1, 3, 224, 224), np.float32))
            for _ in range(5):
                httpx.post(
                    f"http://127.0.0.1:{port}/v2/models/m/infer", content=body, headers=headers, timeout=30
                )
            out["rss_mb"] = psutil.Process(proc.pid).memory_info().rss / 2**20
        finally:
            proc.terminate()
            proc.wait(10)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    args = ap.parse_args()
    n = 50 if args.quick else 200
    work = Path(tempfile.mkdtemp(prefix="edgekit-bench-"))
    mnet = mobilenet_v2(work / "mobilenet_v2.onnx")
    mnet_b = mobilenet_v2(work / "mobilenet_v2_b.onnx", seed=1)
    small = tiny(work / "tiny.onnx")
    x_m = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    x_t = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    print(f"edgekit agent bench (python {sys.version.split()[0]}, {os.cpu_count()} cpus); models in {work}")
    print(f"MobileNetV2-size model: {mnet.stat().st_size / 2**20:.1f} MB")

    ip = bench_inprocess(mnet, x_m, n)
    print(
        f"1. in-process / bare session.run (MobileNetV2, bare p50 {ip['bare_ms']:.2f} ms): "
        f"local-only {ip['local-only']:.3f}x, local-first {ip['local-first']:.3f}x   (goal <= 1.05)"
    )
    ipt = bench_inprocess(small, x_t, n * 5)
    print(
        f"   tiny model (bare p50 {ipt['bare_ms'] * 1000:.0f} us): local-only {ipt['local-only']:.3f}x, "
        f"local-first {ipt['local-first']:.3f}x"
    )

    ht = bench_http(small, x_t, n * 5)
    hm = bench_http(mnet, x_m, n)
    print(
        f"2. HTTP p50 overhead over bare compute: tiny {ht['overhead_ms']:.3f} ms "
        f"(http {ht['http_p50_ms']:.3f} vs bare {ht['bare_p50_ms']:.3f}); MobileNetV2 binary "
        f"{hm['overhead_ms']:.3f} ms (http {hm['http_p50_ms']:.2f} vs bare {hm['bare_p50_ms']:.2f})   (goal <= 1 ms)"
    )

    hs = bench_hotswap(mnet, mnet_b, x_m, 4.0 if args.quick else 8.0)
    print(
        f"3. p99 during hot swap {hs['swap_p99_ms']:.2f} ms vs steady {hs['steady_p99_ms']:.2f} ms = "
        f"{hs['ratio']:.2f}x over {hs['swaps']} swaps, {hs['requests']} requests, {hs['errors']} errors"
        f"   (goal <= 2x, 0 errors)"
    )

    d = bench_daemon(mnet, work)
    print(f"4. RSS of `edgekit agent run` with MobileNetV2 loaded: {d['rss_mb']:.0f} MB   (goal <= 150 MB)")
    print(
        f"5. process start -> /v2/health/ready: {d['ready_s_warm']:.2f} s "
        f"(first start incl. store import {d['ready_s_first']:.2f} s)   (goal <= 1 s)"
    )


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
