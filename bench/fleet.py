"""Fleet rollout benchmark on a real Mosquitto: N simulated devices, one wave at 100%.

    .venv/bin/python bench/fleet.py                 # 1,000 devices
    .venv/bin/python bench/fleet.py --devices 5000

Runs `edgekit fleet serve` as its own process (so its CPU time is its own) against Mosquitto
started here with a password file and per-device ACLs; the devices are real MQTT clients in this
process (one selector loop) that verify every signed manifest with edgekit.trust and report
downloading -> active. Prints: time from `rollout start` (admin API call) to 99% / 100% of the
devices reporting active (seen by the devices and by the server), messages per device, and the
CPU seconds of the server, the broker and the simulated devices, and `lost` / `duplicates`.
Goal (issue 11): 5,000 devices reach 99% active within 5 s on loopback, with <= 0.5 ms of
server CPU per device; `--json` prints only the JSON line.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from edgekit.trust import load_trusted_root  # noqa: E402
from fleet.server import open_state  # noqa: E402
from tests.support.convert_output import make_convert_output  # noqa: E402
from tests.support.devices import DevicePool  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402
from tests.support.net import free_ports, wait_port  # noqa: E402

FLEET = "bench"
GOAL_T99_S, GOAL_CPU_MS = 5.0, 0.5


def losses(pool: DevicePool, server_active: int) -> tuple[int, int]:
    """(lost, duplicates): devices that never got a manifest, plus active reports the server
    did not count; devices that got two different payloads for one sequence."""
    lost = sum(1 for d in pool.devices.values() if not d.manifests)
    lost += max(0, sum(1 for d in pool.devices.values() if d.active_at) - server_active)
    duplicates = 0
    for d in pool.devices.values():
        by_seq: dict[int, set[bytes]] = {}
        for p in d.payloads:
            by_seq.setdefault(json.loads(p)["signed"]["sequence"], set()).add(p)
        duplicates += any(len(v) > 1 for v in by_seq.values())
    return lost, duplicates


def cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    ap.add_argument("--no-verify", action="store_true", help="devices skip signature verification")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args()
    n = args.devices

    tmp = Path(tempfile.mkdtemp(prefix="edgekit-bench-fleet-"))
    users = {f"dev-{i:05d}": f"pw-{i}" for i in range(n)}
    mqtt_port, http_port, admin_port = free_ports(3)
    with Mosquitto(FLEET, users, port=mqtt_port) as broker:
        cfg = tmp / "fleet.toml"
        cfg.write_text(
            f'[server]\nfleet = "{FLEET}"\nstate_dir = "{tmp / "state"}"\ntick_seconds = 0.2\n'
            f'[broker]\nembedded = false\nport = {mqtt_port}\nusername = "{broker.server_user}"\n'
            f'password = "{broker.server_password}"\n[http]\nport = {http_port}\n[admin]\nport = {admin_port}\n'
        )
        db, _store, registry = open_state(tmp / "state")
        registry.publish(make_convert_output(tmp / "convert-out"), "tiny", "1.0")
        db.close()
        env = dict(os.environ, EDGEKIT_LOG_LEVEL="WARNING")
        srv = subprocess.Popen(
            [sys.executable, "-m", "edgekit.cli", "fleet", "serve", "--config", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        pool = None
        try:
            wait_port(admin_port, timeout=30)
            token = (tmp / "state" / "admin.token").read_text()
            api = httpx.Client(
                base_url=f"http://127.0.0.1:{admin_port}",
                timeout=60,
                headers={"Authorization": f"Bearer {token}"},
            )
            root = load_trusted_root((tmp / "state" / "root.json").read_bytes())
            pool = DevicePool(
                FLEET, root, "127.0.0.1", mqtt_port, password=users.__getitem__, verify=not args.no_verify
            )
            for i in range(n):
                pool.add(f"dev-{i:05d}", {"ring": "bench"})
            t_conn = time.monotonic()
            pool.connect_all(timeout=args.timeout)
            connect_s = time.monotonic() - t_conn
            deadline = time.monotonic() + args.timeout
            while len(api.get("/api/devices").json()) < n:
                if time.monotonic() > deadline:
                    raise SystemExit("server did not see every device")
                time.sleep(0.2)

            sp, bp, me = psutil.Process(srv.pid), psutil.Process(broker.proc.pid), psutil.Process()
            health0 = api.get("/api/health").json()
            c_srv, c_brk, c_me = cpu(sp), cpu(bp), cpu(me)
            t0 = time.monotonic()
            rid = api.post(
                "/api/rollouts",
                json={
                    "model": "tiny",
                    "version": "1.0",
                    "selector": {"ring": "bench"},
                    "waves": [100],
                    "success_threshold": 0.99,
                    "max_failure_rate": 0.01,
                    "device_timeout": args.timeout,
                },
            ).json()["id"]
            t_api = time.monotonic() - t0
            server_t99 = None
            while True:
                st = api.get(f"/api/rollouts/{rid}").json()
                now = time.monotonic() - t0
                if server_t99 is None and st["totals"]["active"] >= 0.99 * n:
                    server_t99 = now
                if st["state"] != "running" or now > args.timeout:
                    break
                time.sleep(0.05)
            server_end = time.monotonic() - t0
            c_srv, c_brk, c_me = cpu(sp) - c_srv, cpu(bp) - c_brk, cpu(me) - c_me
            health1 = api.get("/api/health").json()
            active = [d.active_at - t0 for d in pool.devices.values() if d.active_at]
            dev_t99 = sorted(active)[int(0.99 * n) - 1] if len(active) >= 0.99 * n else None
            dev_t100 = max(active) if len(active) == n else None
            received = sum(d.received for d in pool.devices.values())
            sent = sum(d.sent for d in pool.devices.values())
            refused = sum(len(d.refused) for d in pool.devices.values())
            lost, duplicates = losses(pool, st["totals"]["active"])
        finally:
            if pool:
                pool.stop()
            srv.terminate()
            try:
                srv.wait(timeout=20)
            except subprocess.TimeoutExpired:
                srv.kill()

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f} s"

    rollout_msgs_in = health1["messages_in"] - health0["messages_in"]
    result = {
        "devices": n,
        "completed": st["state"] == "completed",
        "seconds_to_99pct_active": None if dev_t99 is None else round(dev_t99, 2),
        "server_cpu_ms_per_device": round(1000 * c_srv / n, 3),
        "rollout_start_s": round(t_api, 3),
        "lost": lost,
        "duplicates": duplicates,
        # ratios against the goals of issue 11 (<= 5 s to 99% active, <= 0.5 ms server CPU per device)
        "t99_vs_goal": None if dev_t99 is None else round(dev_t99 / GOAL_T99_S, 2),
        "cpu_vs_goal": round(1000 * c_srv / n / GOAL_CPU_MS, 2),
        "rollout_state": st["state"],
        "active": st["totals"]["active"],
        "connect_s": round(connect_s, 2),
        "api_start_s": round(t_api, 3),
        "device_t99_s": dev_t99,
        "device_t100_s": dev_t100,
        "server_t99_s": server_t99,
        "server_completed_s": round(server_end, 2),
        "manifests_per_device": (health1["manifests_sent"] - health0["manifests_sent"]) / n,
        "status_msgs_per_device_to_server": rollout_msgs_in / n,
        "device_msgs_received_per_device": received / n,
        "device_msgs_sent_per_device_incl_connect": sent / n,
        "refused_manifests": refused,
        "server_cpu_s": round(c_srv, 2),
        "broker_cpu_s": round(c_brk, 2),
        "sim_devices_cpu_s": round(c_me, 2),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"devices: {n} on Mosquitto (loopback), one wave at 100%; connect {connect_s:.1f} s")
    print(f"rollout {rid}: {st['state']}, {st['totals']['active']}/{n} active")
    print(
        f"  start -> 99% active: devices {fmt(dev_t99)}, server view {fmt(server_t99)}"
        f"  (goal for 5,000: <= 5 s)"
    )
    print(
        f"  start -> 100% active (devices): {fmt(dev_t100)}; server marked it {st['state']} at {server_end:.2f} s"
    )
    print(
        f"  messages per device: {result['manifests_per_device']:.2f} manifest(s) out,"
        f" {result['status_msgs_per_device_to_server']:.2f} status in (server);"
        f" device received {received / n:.2f}, sent {sent / n:.2f} incl. connect-time online+idle"
    )
    print(
        f"  CPU during rollout: server {c_srv:.2f} s ({1000 * c_srv / n:.2f} ms/device),"
        f" mosquitto {c_brk:.2f} s, simulated devices {c_me:.2f} s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
