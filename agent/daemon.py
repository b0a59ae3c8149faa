"""The agent daemon: wires store, updater, inference engine, OIP server, MQTT and heartbeat.

Start-up order matters: recover interrupted updates and load the active models *before* the
server says ready and before MQTT delivers new manifests (the updater queue runs recovery first).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from agent import fallback as fb
from agent import versions
from agent.batcher import configs_from
from agent.breaker import CircuitBreaker
from agent.cloud import CloudClient
from agent.config import file_problems, load_agent_config, read_root
from agent.download_limits import DownloadLimits
from agent.drift import DriftRecorder
from agent.engine import Engine
from agent.health_window import HealthWindow
from agent.metrics import Metrics
from agent.models import ModelRegistry, RuntimeTuning, set_runtime_tuning
from agent.server import ServerThread, build_app
from agent.shadow import SHADOW_THREADS, ShadowMirror
from agent.state import StateStore
from agent.store import Entry, ModelStore
from agent.updater import Updater
from edgekit.sdnotify import Watchdog, notify
from edgekit.settings import ConfigProblems

log = logging.getLogger(__name__)


def _policy(d: dict[str, Any], base: dict[str, Any]) -> fb.Policy:
    merged = {**base, **{k: v for k, v in d.items() if k not in ("path", "version")}}
    return fb.Policy.from_dict(merged)


class Agent:
    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        a = cfg["agent"]
        self.device, self.fleet = a["device"], a["fleet"]
        data = Path(a["data_dir"])
        self.metrics = Metrics()
        self._health: dict[str, Any] | None = None  # of the heartbeat being sent (edgekit.protocol.Health)
        self.store = ModelStore(data / "store")
        self.states = StateStore(data / "state")
        set_runtime_tuning(RuntimeTuning.from_config(a))  # before any model is opened
        self.registry = ModelRegistry(versions.policies_from_config(cfg["models"]))
        self.started_at = time.monotonic()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self.engine = Engine(
            self.registry,
            cloud=self._cloud(cfg["cloud"]),
            policies={n: _policy(m, cfg["fallback"]) for n, m in cfg["models"].items()},
            default_policy=fb.Policy.from_dict(cfg["fallback"]),
            metrics=self.metrics,
            batching=configs_from(cfg["models"]),
            drift=DriftRecorder(float(a["drift_share"])),
        )
        # shadow versions, compared on a sampled share of answered requests (agent.shadow)
        self.shadows = ShadowMirror(self.registry, float(a["shadow_sample"]), int(a["shadow_queue"]))
        self.engine.shadow = self.shadows
        self.updater: Updater | None = None
        self.mqtt = None
        self.server: ServerThread | None = None

    @staticmethod
    def _cloud(c: dict[str, Any]) -> CloudClient | None:
        if not c.get("url"):
            return None
        return CloudClient(
            c["url"],
            timeout=float(c["timeout_ms"]) / 1000,
            retries=int(c["retries"]),
            breaker=CircuitBreaker(int(c["breaker_failures"]), float(c["breaker_reset_s"])),
            binary=bool(c.get("binary", True)),
        )

    def _download_opts(self) -> dict[str, Any]:
        d = self.cfg["download"]
        opts: dict[str, Any] = {
            "timeout": float(d["timeout_s"]),
            "retries": int(d["retries"]),
            "limits": DownloadLimits.from_config(d),
        }
        if d.get("ca"):
            opts["verify"] = d["ca"]
        if d.get("cert"):
            opts["cert"] = (d["cert"], d["key"])
        return opts

    def _install_configured_models(self) -> None:
        """[models.NAME] path=... : a model shipped with the box, used until an update replaces it."""
        for name, m in self.cfg["models"].items():
            if not m.get("path") or self.store.active(name) is not None:
                continue
            p = Path(m["path"])
            digest, _ = self.store.add_file(p)
            self.store.activate(
                name, Entry(version=str(m.get("version", "0")), sha256=digest, format=p.suffix.lstrip("."))
            )

    def start(self) -> None:
        a = self.cfg["agent"]
        self._install_configured_models()
        if self.cfg["mqtt"]["enabled"]:
            root = read_root(self.cfg)
            self.updater = Updater(
                store=self.store,
                states=self.states,
                registry=self.registry,
                root=root,
                fleet=self.fleet,
                device=self.device,
                trust_file=Path(a["data_dir"]) / "trust.json",
                formats=list(a["formats"]),
                report=self._report,
                metrics=self.metrics,
                threads=int(a["threads"]) or None,
                download_opts=self._download_opts(),
                base_url=self.cfg["download"]["base_url"] or None,
                labels=dict(a["labels"]),
                shadows=self.shadows,
            )
            # Serve what the pointers name (a pointer only ever names a verified, smoke-tested
            # blob); interrupted updates are resumed or rolled back by the updater thread first
            # thing, so a long resumed download does not delay readiness.
            self.updater.load_active(verify=bool(a["verify_on_start"]))
        else:
            self._load_without_updater()
        s = self.cfg["server"]
        if s["enabled"]:
            app = build_app(
                self.engine,
                max_body=int(float(s["max_body_mb"]) * (1 << 20)),
                is_ready=self._ready.is_set,
                status=self.status,
                admin_token=s.get("admin_token") or None,
            )
            self.server = ServerThread(app, s["host"], int(s["port"])).start()
        if self.updater is not None:
            from agent.mqtt import AgentMqtt, MqttSettings

            self.updater.start()
            self.mqtt = AgentMqtt(
                MqttSettings.from_dict(self.cfg["mqtt"]),
                fleet=self.fleet,
                device=self.device,
                on_desired=self.updater.submit,
                on_roots=self.updater.submit_roots,
                labels=dict(a["labels"]),
                on_connection=lambda up: self.metrics.mqtt_connected.set(value=1 if up else 0),
            )
            self.mqtt.start()
            threading.Thread(target=self._heartbeat, name="edgekit-heartbeat", daemon=True).start()
        self._ready.set()
        log.info("agent %s ready in %.3f s", self.device, time.monotonic() - self.started_at)

    def _load_without_updater(self) -> None:
        from agent.models import load_model

        for name in self.store.model_names():
            e = self.store.active(name)
            if e:
                self.registry.put(
                    load_model(name, self.store.blob_path(e.sha256, e.format), e.version, sha256=e.sha256)
                )
            s = self.store.shadow(name)
            if e and s:  # installed by an update before MQTT was turned off: still compared
                path = self.store.blob_path(s.sha256, s.format)
                self.shadows.set(load_model(name, path, s.version, sha256=s.sha256, threads=SHADOW_THREADS))

    def _report(self, msg: dict[str, Any]) -> None:
        if self.mqtt is not None:
            if msg.get("heartbeat") and self._health is not None:
                msg = {**msg, "health": self._health}
            drift = self.engine.drift.report() if msg.get("heartbeat") else None
            if drift:  # what each version was served since it loaded (agent.drift)
                msg = {**msg, "drift": drift}
            shadow = self.shadows.stats()
            if shadow:  # every status and heartbeat carries them (edgekit.protocol.ShadowStats)
                msg = {**msg, "shadow": shadow}
            self.mqtt.publish_status(msg)

    def _heartbeat(self) -> None:
        period = float(self.cfg["agent"]["heartbeat_s"])
        window = HealthWindow(self.metrics)  # the fleet's health gates judge rollouts by it
        while not self._stop.wait(period):
            if self.updater and self.mqtt and self.mqtt.connected.is_set():
                health = window.sample({m.name: str(m.version) for m in self.registry.all()})
                self._health = dataclasses.asdict(health) if health is not None else None
                try:
                    self.updater.heartbeat()  # reports through _report, in this thread
                finally:
                    self._health = None

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device": self.device,
            "fleet": self.fleet,
            "ready": self._ready.is_set(),
            "mqtt_connected": bool(self.mqtt and self.mqtt.connected.is_set()),
            "models": {m.name: {"version": m.version, "sha256": m.sha256} for m in self.registry.all()},
        }
        if self.engine.cloud is not None:
            out["cloud_breaker"] = self.engine.cloud.breaker.state
        out["shadow"] = self.shadows.stats()
        if self.updater:
            out["updates"] = self.updater.snapshot()
        return out

    def stop(self) -> None:
        self._stop.set()
        if self.mqtt is not None:
            self.mqtt.stop()
        if self.updater is not None:
            self.updater.stop()
        if self.server is not None:
            self.server.stop()
        self.shadows.close()
        self.engine.close()

    def wait(self) -> None:
        self._stop.wait()

    def healthy(self) -> bool:
        """What the systemd watchdog vouches for: the OIP event loop answers a liveness request
        (a wedged loop still has a live thread) and the updater thread is running."""
        if self._stop.is_set() or not self._ready.is_set():
            return False
        upd = self.updater._thread if self.updater is not None else None
        if upd is not None and not upd.is_alive():
            return False
        if self.server is None:
            return True
        import http.client

        conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=5)
        try:
            conn.request("GET", "/v2/health/live")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()


def run_daemon(config_path: str | Path) -> None:
    cfg = load_agent_config(config_path)
    problems = file_problems(cfg)
    if problems:  # before Agent() creates data_dir: a config that cannot run leaves no trace
        raise ConfigProblems(str(config_path), problems)
    agent = Agent(cfg)
    stop = threading.Event()

    def _signal(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    agent.start()
    if agent.server:
        print(f"edgekit agent {agent.device}: OIP on {agent.server.url}", flush=True)
    # Type=notify: ready means models loaded and the OIP server listening (agent.start returned).
    notify(f"READY=1\nSTATUS=serving {len(agent.registry.all())} model(s)")
    watchdog = Watchdog.from_env(agent.healthy)
    if watchdog is not None:
        watchdog.start()
    stop.wait()
    notify("STOPPING=1")
    if watchdog is not None:
        watchdog.stop()
    agent.stop()
