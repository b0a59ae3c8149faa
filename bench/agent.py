"""Agent benchmark, one command: `.venv/bin/python bench/agent.py [--quick]`.

Prints, measured in the same run on this machine:
  1. in-process Engine.infer latency / bare onnxruntime session.run latency (goal <= 1.05)
  2. HTTP p50 overhead in ms over bare compute (goal <= 1 ms), via `edgekit serve` in a subprocess,
     seen by two kept-alive clients in the same run: httpx and the lean http.client (bench_http)
  3. p99 during hot swaps vs steady p99 (goal <= 2x)
  4. RSS of `edgekit agent run` with a MobileNetV2-size model loaded (goal <= 150 MB)
  5. time from process start to /v2/health/ready (goal <= 1 s), and the CPU seconds the process
     used by then (less sensitive than the wall time to what else the box runs)
Readiness is polled with a client that costs next to no CPU (see wait_ready).
The repo's bytecode is compiled first, as installing a package does (this box sets
PYTHONDONTWRITEBYTECODE, so without it every start compiled edgekit's and the agent's sources).
The JSON line also carries the 1-minute load average before and after the run: on a shared
2-core box the wall-clock figures move with it.
The MobileNetV2-size model (3.5 M params, 224x224x3, random weights) is built with onnx.helper.
`--json` prints the same figures as one JSON line.

`--batching [--json]` measures the dynamic batcher instead, on the MobileNetV2-size model:
  batched_throughput_vs_bare_ort_b32  agent requests/s (`edgekit serve --max-batch-size 32`, 64
                                      concurrent single-sample clients over HTTP) / bare
                                      session.run samples/s at batch 32 (goal >= 0.8)
  unbatched_throughput_vs_bare_ort_b1 the same without batching / bare session.run at batch 1
  low_load_p50_added_ms               p50 of 1 sequential client, batching on minus off (goal <= 2)
  rss_mb_batched / rss_mb_unbatched   the server's RSS after the load (onnxruntime's arena keeps
                                      what the largest run needed)
The load generator is one asyncio process (64 keep-alive HTTP/1.1 connections on raw asyncio
streams, the binary tensor extension); its CPU use is reported (load_generator_cpu_cores) so it
can be seen not to be the bottleneck.
"""

from __future__ import annotations

import argparse
import json
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
def bench_models(prefix: str) -> tuple[Path, Path, Path, Path, np.ndarray, np.ndarray]:
    """(dir, MobileNetV2-size model, a second one for hot swaps, tiny model, an input of each)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    mnet = mobilenet_v2(work / "mobilenet_v2.onnx")
    mnet_b = mobilenet_v2(work / "mobilenet_v2_b.onnx", seed=1)
    small = tiny(work / "tiny.onnx")
    x_m = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    x_t = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    return work, mnet, mnet_b, small, x_m, x_t


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> float:
    """When GET /v2/health/ready first answers 200. Polled with http.client every 5 ms: each
    `httpx.get` built a client (and its TLS context) for 25 ms of CPU, so polling with it took
    most of a core from the process being timed on a 2-core box; this costs ~0.05 ms a poll."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=0.5)
        try:
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return time.monotonic()
        except OSError:  # refused (not listening yet), reset, timed out
            pass
        finally:
            conn.close()
        time.sleep(0.005)
    raise TimeoutError(url)


def binary_request(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    from agent.oip import HEADER_LENGTH, encode_request

    body, hlen = encode_request({"input": x}, binary=True)
    return body, {HEADER_LENGTH: str(hlen), "Content-Type": "application/octet-stream"}


# --- A/B knobs -------------------------------------------------------------------------------------
# Module-level switches the --ab runs flip, as (module, attribute): the agent reads them when it
# opens a session or builds its server, so one process (or `edgekit serve` started through
# serve_command) runs one variant.
KNOBS = {
    "loop": ("agent.server", "EVENT_LOOP"),  # "uvloop" | "asyncio"
    "spin": ("targets.runtimes.onnxrt", "ALLOW_SPINNING"),  # bool
}


def apply_knobs(knobs: dict[str, object] | None) -> None:
    import importlib

    for k, v in (knobs or {}).items():
        module, attr = KNOBS[k]
        setattr(importlib.import_module(module), attr, v)


def serve_command(knobs: dict[str, object] | None) -> list[str]:
    """`python -m edgekit.cli`, or the same with the knobs set first."""
    if not knobs:
        return [sys.executable, "-m", "edgekit.cli"]
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from bench.agent import apply_knobs; "
        f"apply_knobs({knobs!r}); from edgekit.cli import main; main(sys.argv[1:], 'edgekit')"
    )
    return [sys.executable, "-c", code]


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
def bench_http(
    model_path: Path, x: np.ndarray, n: int, knobs: dict[str, object] | None = None
) -> dict[str, float]:
    """p50 of a kept-alive client's POST minus bare session.run, with two clients in one run:
    httpx (what the earlier figures used) and the standard library's http.client (a lean client,
    as Triton's perf_analyzer is). Same server, same requests: what separates the two figures is
    the client's own cost, so the second is closer to what the agent itself adds."""
    import http.client

    import httpx

    from agent.models import load_model

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [*serve_command(knobs), "serve", str(model_path), "--name", "m", "--port", str(port)],
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
        lean = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

        def lean_post() -> int:
            lean.request("POST", "/v2/models/m/infer", body=body, headers=headers)
            r = lean.getresponse()
            r.read()
            return r.status

        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(20):
                assert c.post("/v2/models/m/infer", content=body, headers=headers).status_code == 200
                assert lean_post() == 200
            via_httpx, via_lean, bare = [], [], []
            for _ in range(n):  # interleaved: the box's load drifts alike for all three
                t0 = time.perf_counter()
                c.post("/v2/models/m/infer", content=body, headers=headers)
                t1 = time.perf_counter()
                sess.run(None, {"input": x})
                t2 = time.perf_counter()
                lean_post()
                t3 = time.perf_counter()
                via_httpx.append(t1 - t0)
                bare.append(t2 - t1)
                via_lean.append(t3 - t2)
        lean.close()
        return {
            "http_p50_ms": pct(via_httpx, 50) * 1000,
            "bare_p50_ms": pct(bare, 50) * 1000,
            "overhead_ms": (pct(via_httpx, 50) - pct(bare, 50)) * 1000,
            "lean_http_p50_ms": pct(via_lean, 50) * 1000,
            "lean_overhead_ms": (pct(via_lean, 50) - pct(bare, 50)) * 1000,
        }
    finally:
        proc.terminate()
        proc.wait(10)


# --- 3. hot swap p99 ------------------------------------------------------------------------------
def _load_client(url: str, body: bytes, headers: dict[str, str], seconds: float, q) -> None:
    """One sequential client for `seconds`: (start on the system-wide monotonic clock, latency)
    per request, and the count of non-200 answers."""
    import httpx

    reqs, errors = [], 0
    with httpx.Client(base_url=url, timeout=30) as c:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.monotonic()
            r = c.post("/v2/models/m/infer", content=body, headers=headers)
            reqs.append((t0, time.monotonic() - t0))
            errors += r.status_code != 200
    q.put((reqs, errors))


def split_by_windows(
    reqs: list[tuple[float, float]], windows: list[tuple[float, float]]
) -> tuple[list[float], list[float]]:
    """Latencies of requests that started outside / inside any (start, end) window."""
    steady, inside = [], []
    for t0, lat in reqs:
        (inside if any(a <= t0 < b for a, b in windows) else steady).append(lat)
    return steady, inside


def bench_hotswap(model_a: Path, model_b: Path, x: np.ndarray, seconds: float) -> dict[str, float]:
    """One client runs throughout; swap phases (a new version loaded and activated every 0.5 s,
    4 times) alternate with quiet phases, so drift in the box's load hits both alike. A swap
    phase's window lasts until its last replaced model was freed (RETIRE_S after its swap); the
    requests that started in no window are the steady ones."""
    from agent import fallback as fb
    from agent.engine import Engine
    from agent.models import RETIRE_S, ModelRegistry, load_model
    from agent.server import ServerThread, build_app

    reg = ModelRegistry()
    reg.put(load_model("m", model_a, "a"))
    eng = Engine(reg, default_policy=fb.Policy(mode=fb.LOCAL_ONLY))
    srv = ServerThread(build_app(eng)).start()
    body, headers = binary_request(x)
    ctx = mp.get_context("spawn")
    swaps_per_phase, every, quiet = 4, 0.5, 2.0
    cycle = swaps_per_phase * every + RETIRE_S + quiet
    cycles = max(2, round(seconds * 3 / cycle))  # as long as the former 3 windows of `seconds`
    warmup = 1.5  # client process start, first connections
    try:
        q = ctx.Queue()
        p = ctx.Process(target=_load_client, args=(srv.url, body, headers, warmup + cycles * cycle + 0.5, q))
        p.start()
        time.sleep(warmup)
        t_begin = time.monotonic()
        windows, swaps = [], 0
        for _ in range(cycles):
            w0 = time.monotonic()
            for _ in range(swaps_per_phase):
                t = time.monotonic()
                # what an update does: load the new version next to the old, then swap the reference
                reg.put(load_model("m", model_b if swaps % 2 == 0 else model_a, f"v{swaps}"))
                swaps += 1
                time.sleep(max(0.0, every - (time.monotonic() - t)))
            windows.append((w0, time.monotonic() + RETIRE_S + 0.1))
            time.sleep(RETIRE_S + quiet)
        reqs, errors = q.get(timeout=cycles * cycle + 60)
        p.join(30)
        steady, swapping = split_by_windows([r for r in reqs if r[0] >= t_begin], windows)
        return {
            "steady_p99_ms": pct(steady, 99) * 1000,
            "swap_p99_ms": pct(swapping, 99) * 1000,
            "ratio": pct(swapping, 99) / pct(steady, 99),
            "swaps": swaps,
            "errors": errors,
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
            cpu = psutil.Process(proc.pid).cpu_times()
            out[f"ready_s_{run}"] = ready - t0
            out[f"ready_cpu_s_{run}"] = cpu.user + cpu.system
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


# --- dynamic batching ---------------------------------------------------------------------------
def start_serve(model_path: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "edgekit.cli", "serve", str(model_path), "--name", "m", "--port", str(port)]
    proc = subprocess.Popen(
        cmd + extra, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def bare_throughput(model_path: Path, batch: int, seconds: float) -> float:
    """Samples/s of session.run at `batch`, the way the agent opens the model."""
    from agent.models import load_model

    m = load_model("m", model_path, "1")
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    m.run({"input": x})
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or runs < 3:
        m.run({"input": x})
        runs += 1
    return runs * batch / (time.perf_counter() - t0)


def http_throughput(url: str, clients: int, seconds: float, warmup: float = 2.0) -> dict[str, float]:
    """Requests/s of `clients` concurrent single-sample clients: one asyncio process, one
    keep-alive connection per client writing a prebuilt HTTP/1.1 request (binary tensor
    extension) and reading the response by its Content-Length. httpx's AsyncClient spent ~9 ms
    of CPU per 600 KB request here, CPU the server needs; this costs a fraction of that."""
    import asyncio
    from urllib.parse import urlsplit

    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    body, headers = binary_request(x)
    u = urlsplit(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST /v2/models/m/infer HTTP/1.1\r\nHost: {u.netloc}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def run() -> dict[str, float]:
        done, errors, measuring = [0], [0], [False]

        async def client(stop: float) -> None:
            reader, writer = await asyncio.open_connection(u.hostname, u.port)
            try:
                while time.monotonic() < stop:
                    writer.write(request)
                    await writer.drain()
                    lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
                    length = next(
                        int(h.split(b":")[1]) for h in lines if h.lower().startswith(b"content-length:")
                    )
                    await reader.readexactly(length)
                    if measuring[0]:
                        done[0] += 1
                        errors[0] += lines[0].split(b" ")[1] != b"200"
            finally:
                writer.close()

        stop = time.monotonic() + warmup + seconds
        tasks = [asyncio.create_task(client(stop)) for _ in range(clients)]
        await asyncio.sleep(warmup)
        measuring[0] = True
        t0, cpu0 = time.monotonic(), time.process_time()
        await asyncio.gather(*tasks)
        elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
        return {"rps": done[0] / elapsed, "errors": errors[0], "client_cpu": cpu / elapsed}

    return asyncio.run(run())


def low_load_p50(urls: list[str], n: int) -> list[float]:
    """p50 latency of one sequential client per url, requests interleaved across the urls."""
    import httpx

    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    body, headers = binary_request(x)
    clients = [httpx.Client(base_url=u, timeout=60) for u in urls]
    lat: list[list[float]] = [[] for _ in urls]
    try:
        for i in range(n + 10):
            for j, c in enumerate(clients):
                t0 = time.perf_counter()
                assert c.post("/v2/models/m/infer", content=body, headers=headers).status_code == 200
                if i >= 10:
                    lat[j].append(time.perf_counter() - t0)
    finally:
        for c in clients:
            c.close()
    return [pct(xs, 50) * 1000 for xs in lat]


def bench_batching(quick: bool) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="edgekit-bench-"))
    mnet = mobilenet_v2(work / "mobilenet_v2.onnx")
    seconds = 8.0 if quick else 20.0
    batching = ["--max-batch-size", "32", "--max-queue-delay-us", "500"]
    batching += [
        "--preferred-batch-size",
        "8",
        "--preferred-batch-size",
        "16",
        "--preferred-batch-size",
        "32",
    ]
    out: dict[str, float] = {}
    b32 = bare_throughput(mnet, 32, seconds / 2)
    proc, url = start_serve(mnet, batching)
    try:
        batched = http_throughput(url, 64, seconds)
        rss_batched = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    b32 = (b32 + bare_throughput(mnet, 32, seconds / 2)) / 2  # before and after: drift hits both
    b1 = bare_throughput(mnet, 1, seconds / 2)
    proc, url = start_serve(mnet, [])
    try:
        unbatched = http_throughput(url, 64, seconds)
        rss_unbatched = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    b1 = (b1 + bare_throughput(mnet, 1, seconds / 2)) / 2
    on, on_url = start_serve(mnet, batching)
    off, off_url = start_serve(mnet, [])
    try:
        p_on, p_off = low_load_p50([on_url, off_url], 50 if quick else 150)
    finally:
        for p in (on, off):
            p.terminate()
            p.wait(10)
    out.update(
        batched_throughput_vs_bare_ort_b32=batched["rps"] / b32,
        unbatched_throughput_vs_bare_ort_b1=unbatched["rps"] / b1,
        low_load_p50_added_ms=p_on - p_off,
        batched_rps=batched["rps"],
        unbatched_rps=unbatched["rps"],
        bare_b32_samples_per_s=b32,
        bare_b1_samples_per_s=b1,
        low_load_p50_on_ms=p_on,
        low_load_p50_off_ms=p_off,
        errors=batched["errors"] + unbatched["errors"],
        load_generator_cpu_cores=max(batched["client_cpu"], unbatched["client_cpu"]),
        rss_mb_batched=rss_batched,
        rss_mb_unbatched=rss_unbatched,
    )
    return out


# --- A/B of the knobs ------------------------------------------------------------------------------
AB_VARIANTS: dict[str, dict[str, object]] = {
    "default": {},  # what the agent ships
    "uvloop": {"loop": "uvloop"},  # needs `pip install uvloop`
    "spin": {"spin": True},
    "before": {"spin": True},  # the agent before issue 14's second pass (asyncio, spinning)
}


def bench_ab(variants: list[str], rounds: int, quick: bool) -> dict[str, list[dict[str, float]]]:
    """Each variant measured `rounds` times, alternating (the order reversed every other round),
    so load on the box hits every variant alike. Per run: figures 1 (MobileNetV2 in-process),
    2 (HTTP overhead, tiny model and MobileNetV2) and 3 (hot-swap p99 ratio)."""
    _, mnet, mnet_b, small, x_m, x_t = bench_models("edgekit-bench-ab-")
    n = 50 if quick else 200
    defaults = {k: getattr(__import__(m, fromlist=[a]), a) for k, (m, a) in KNOBS.items()}
    out: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for r in range(rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            knobs = AB_VARIANTS[v]
            apply_knobs({**defaults, **knobs})
            load = os.getloadavg()[0]
            ip = bench_inprocess(mnet, x_m, n)
            ht = bench_http(small, x_t, n * 5, knobs)
            hm = bench_http(mnet, x_m, n, knobs)
            hs = bench_hotswap(mnet, mnet_b, x_m, 4.0 if quick else 6.0)
            row = {
                "inprocess_vs_bare": ip["local-only"],
                "bare_ms": ip["bare_ms"],
                "http_overhead_tiny_ms": ht["overhead_ms"],
                "http_overhead_tiny_lean_client_ms": ht["lean_overhead_ms"],
                "http_overhead_mobilenet_ms": hm["overhead_ms"],
                "hotswap_ratio": hs["ratio"],
                "steady_p99_ms": hs["steady_p99_ms"],
                "swap_p99_ms": hs["swap_p99_ms"],
                "loadavg": load,
            }
            out[v].append({k: round(float(x), 3) for k, x in row.items()})
            print(json.dumps({"variant": v, "round": r, **out[v][-1]}), flush=True)
    apply_knobs(defaults)
    return out


def compile_bytecode() -> None:
    """What `pip install` does for a package: compile the sources once (only stale files)."""
    import compileall

    for package in ("agent", "edgekit", "targets"):
        compileall.compile_dir(REPO / package, quiet=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--batching", action="store_true", help="measure the dynamic batcher")
    ap.add_argument(
        "--ab",
        metavar="VARIANTS",
        help=f"A/B of comma-separated variants ({', '.join(AB_VARIANTS)}); one JSON line per run, "
        "then the median per variant",
    )
    ap.add_argument("--rounds", type=int, default=3, help="runs per variant with --ab")
    args = ap.parse_args()
    if args.ab:
        variants = args.ab.split(",")
        unknown = [v for v in variants if v not in AB_VARIANTS]
        if unknown:
            ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(AB_VARIANTS)}")
        import importlib.util

        if "uvloop" in variants and importlib.util.find_spec("uvloop") is None:
            ap.error("variant uvloop needs uvloop installed: .venv/bin/pip install uvloop")
        compile_bytecode()
        res = bench_ab(variants, args.rounds, args.quick)
        for v, rows in res.items():
            med = {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}
            print(json.dumps({"variant": v, "median_of": len(rows), **med}))
        return
    if args.batching:
        res = bench_batching(args.quick)
        if args.json:
            print(json.dumps({k: round(v, 4) for k, v in res.items()}))
        else:
            for k, v in res.items():
                print(f"{k}: {v:.3f}")
        return
    n = 50 if args.quick else 200
    say = (lambda *a, **k: None) if args.json else print
    compile_bytecode()
    load_before = os.getloadavg()[0]
    work, mnet, mnet_b, small, x_m, x_t = bench_models("edgekit-bench-")
    say(f"edgekit agent bench (python {sys.version.split()[0]}, {os.cpu_count()} cpus); models in {work}")
    say(f"MobileNetV2-size model: {mnet.stat().st_size / 2**20:.1f} MB")

    ip = bench_inprocess(mnet, x_m, n)
    say(
        f"1. in-process / bare session.run (MobileNetV2, bare p50 {ip['bare_ms']:.2f} ms): "
        f"local-only {ip['local-only']:.3f}x, local-first {ip['local-first']:.3f}x   (goal <= 1.05)"
    )
    ipt = bench_inprocess(small, x_t, n * 5)
    say(
        f"   tiny model (bare p50 {ipt['bare_ms'] * 1000:.0f} us): local-only {ipt['local-only']:.3f}x, "
        f"local-first {ipt['local-first']:.3f}x"
    )

    ht = bench_http(small, x_t, n * 5)
    hm = bench_http(mnet, x_m, n)
    say(
        f"2. HTTP p50 overhead over bare compute: tiny {ht['overhead_ms']:.3f} ms "
        f"(http {ht['http_p50_ms']:.3f} vs bare {ht['bare_p50_ms']:.3f}); MobileNetV2 binary "
        f"{hm['overhead_ms']:.3f} ms (http {hm['http_p50_ms']:.2f} vs bare {hm['bare_p50_ms']:.2f})   (goal <= 1 ms)"
    )
    say(
        f"   with a lean client (http.client): tiny {ht['lean_overhead_ms']:.3f} ms, "
        f"MobileNetV2 {hm['lean_overhead_ms']:.3f} ms"
    )

    hs = bench_hotswap(mnet, mnet_b, x_m, 4.0 if args.quick else 8.0)
    say(
        f"3. p99 during hot swap {hs['swap_p99_ms']:.2f} ms vs steady {hs['steady_p99_ms']:.2f} ms = "
        f"{hs['ratio']:.2f}x over {hs['swaps']} swaps, {hs['requests']} requests, {hs['errors']} errors"
        f"   (goal <= 2x, 0 errors)"
    )

    d = bench_daemon(mnet, work)
    say(f"4. RSS of `edgekit agent run` with MobileNetV2 loaded: {d['rss_mb']:.0f} MB   (goal <= 150 MB)")
    say(
        f"5. process start -> /v2/health/ready: {d['ready_s_warm']:.2f} s, {d['ready_cpu_s_warm']:.2f} s CPU "
        f"(first start incl. store import {d['ready_s_first']:.2f} s)   (goal <= 1 s)"
    )
    load_after = os.getloadavg()[0]
    say(f"load average (1 min) {load_before:.1f} before, {load_after:.1f} after")
    if args.json:
        figures = {
            "inprocess_vs_bare_local_only": ip["local-only"],
            "inprocess_vs_bare_local_first": ip["local-first"],
            "http_p50_overhead_tiny_ms": ht["overhead_ms"],
            "http_p50_tiny_ms": ht["http_p50_ms"],
            "http_p50_overhead_tiny_lean_client_ms": ht["lean_overhead_ms"],
            "http_p50_overhead_mobilenet_ms": hm["overhead_ms"],
            "http_p50_overhead_mobilenet_lean_client_ms": hm["lean_overhead_ms"],
            "hotswap_p99_vs_steady": hs["ratio"],
            "hotswap_errors": hs["errors"],
            "rss_mb": d["rss_mb"],
            "start_to_ready_s": d["ready_s_warm"],
            "start_to_ready_first_s": d["ready_s_first"],
            "start_to_ready_cpu_s": d["ready_cpu_s_warm"],
            "loadavg_1m_before": load_before,
            "loadavg_1m_after": load_after,
        }
        print(json.dumps({k: round(float(v), 4) for k, v in figures.items()}))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
