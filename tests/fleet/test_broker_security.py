"""Brokers are secure by default (issue 10), on the embedded broker and on the documented Mosquitto:
no anonymous or wrongly authenticated client, per-device topic rules (a device cannot speak for
another, read beyond its own topics, subscribe to `#` or overwrite the retained `roots`), a client
id bound to the username (no take-over of another device's session, no fake Last Will), and
per-device credentials handed out in enrolment bundles by `edgekit fleet devices enroll`.

Every "nothing happened" is checked after a barrier: a later message on the same connection that
the server did see (brokers handle one client's messages in order), never after a sleep."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgekit import topics
from edgekit.protocol import Online, Status, last_will
from fleet.server import FleetServer
from tests.fleet.conftest import FLEET, server_config
from tests.fleet.helpers import wait_for
from tests.support import mosquitto
from tests.support.net import free_port

pytestmark = pytest.mark.timeout(120)
T = 30.0
REPO = Path(__file__).resolve().parents[2]
A, B, C = "dev-000", "dev-001", "dev-002"  # users the test Mosquitto knows too


class Client:
    """A raw MQTT 3.1.1 client (what any process on the network could run) that records what
    the broker tells it: CONNACK, SUBACK codes, messages, disconnects."""

    def __init__(
        self,
        port: int,
        client_id: str,
        user: str | None = None,
        password: str | None = None,
        will_for: str | None = None,
        clean_session: bool = True,
    ):
        self.rc: Any = None
        self.connected = threading.Event()
        self.settled = threading.Event()
        self.disconnects = 0
        self.subacks: list[Any] = []
        self.messages: list[tuple[str, bytes]] = []
        self.acked: set[int] = set()
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=clean_session,
        )
        if user is not None:
            c.username_pw_set(user, password)
        if will_for:
            c.will_set(topics.online(FLEET, will_for), last_will(will_for), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.subacks.extend(rcs)
        c.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        c.on_publish = lambda _c, _u, mid, _rc, _p: self.acked.add(mid)
        self.c = c
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        assert self.settled.wait(T), "no CONNACK"

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.rc = rc
        if not rc.is_failure:
            self.connected.set()
        else:
            client.disconnect()  # do not let paho retry a refused login
        self.settled.set()

    def _on_disconnect(self, *_a: Any) -> None:
        self.disconnects += 1

    @property
    def refused(self) -> bool:
        return self.rc is not None and self.rc.is_failure

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        mid = self.c.publish(topic, payload, qos=1, retain=retain).mid
        wait_for(lambda: mid in self.acked, T, f"PUBACK for {topic}")

    def subscribe(self, *filters: str) -> list[Any]:
        before = len(self.subacks)
        self.c.subscribe([(f, 1) for f in filters])
        wait_for(lambda: len(self.subacks) >= before + len(filters), T, "SUBACK")
        return self.subacks[before:]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _status(device: str, mark: str, state: str = "idle") -> bytes:
    # labels are stored as reported: a mark shows exactly which report the server has seen
    return Status(device=device, state=state, labels={"mark": mark}).to_json()


def _device(srv: FleetServer, device: str) -> dict[str, Any] | None:
    return next((d for d in srv.devices.list() if d["id"] == device), None)


def _server_saw(srv: FleetServer, device: str, mark: str) -> bool:
    d = _device(srv, device)
    return d is not None and d["labels"].get("mark") == mark


# --- 1. nobody without credentials ------------------------------------------------------------
def test_default_embedded_broker_refuses_anonymous_and_wrong_credentials(tmp_path):
    """The shipped defaults (server_config starts from fleet.config.DEFAULTS): anonymous off."""
    port = free_port()
    with FleetServer(server_config(tmp_path, port, embedded=True)) as srv:
        anon = Client(port, "anon")
        no_pw = Client(port, "no-pw", user=A)
        unknown = Client(port, "ghost", user="ghost", password="guess")
        server_name = Client(port, "x", user="fleet-server", password="guess")
        for c in (anon, no_pw, unknown, server_name):
            assert c.refused, (c.c._client_id, c.rc)
            c.close()
        assert srv.devices.list() == []


def test_ghost_device_cannot_appear_active(fleet_env):
    srv, port, password = fleet_env["server"], fleet_env["port"], fleet_env["password"]
    anon = Client(port, "ghost-1", user=None)
    wrong = Client(port, "ghost-2", user=A, password="not-the-password")
    assert anon.refused and wrong.refused
    a = Client(port, A, user=A, password=password(A))
    try:
        assert a.connected.is_set()
        # an enrolled device trying to speak for a device that does not exist
        a.publish(topics.status(FLEET, "ghost"), _status("ghost", "forged", "active"))
        a.publish(topics.online(FLEET, "ghost"), Online("ghost", True, {}, "x").to_json(), retain=True)
        a.publish(topics.status(FLEET, A), _status(A, "barrier"))
        wait_for(lambda: _server_saw(srv, A, "barrier"), T, "the server saw A's own report")
        assert [d["id"] for d in srv.devices.list()] == [A]
    finally:
        a.close()


# --- 2. per-device topic rules ----------------------------------------------------------------
def test_device_stays_inside_its_own_topics(fleet_env):
    srv, port, password = fleet_env["server"], fleet_env["port"], fleet_env["password"]
    b = Client(port, B, user=B, password=password(B))
    a = Client(port, A, user=A, password=password(A))
    c = None
    try:
        b.subscribe(topics.desired(FLEET, B))
        b.publish(topics.status(FLEET, B), _status(B, "b-own"))
        wait_for(lambda: _server_saw(srv, B, "b-own"), T, "B known")

        codes = a.subscribe("#", topics.all_devices(FLEET, "desired"), topics.desired(FLEET, B))
        if fleet_env["kind"] == "embedded":  # MQTT 3.1.1 SUBACK 0x80: refused outright
            assert all(rc.is_failure for rc in codes), codes
        a.subscribe(topics.desired(FLEET, A))
        # A writes as B, writes B's desired (a poisoned manifest), and overwrites roots.
        a.publish(topics.status(FLEET, B), _status(B, "forged-by-a", "failed"))
        a.publish(topics.desired(FLEET, B), b"poisoned", retain=True)
        a.publish(topics.roots(FLEET), b"garbage", retain=True)
        a.publish(topics.status(FLEET, A), _status(A, "a-barrier"))
        wait_for(lambda: _server_saw(srv, A, "a-barrier"), T, "A's barrier report")

        # The server talks to B, then to A: A gets its own message only, B never the poison.
        srv.link.publish(topics.desired(FLEET, B), b"for B", retain=True)
        srv.link.publish(topics.desired(FLEET, A), b"for A", retain=True)
        wait_for(lambda: (topics.desired(FLEET, A), b"for A") in a.messages, T, "A's own desired")
        wait_for(lambda: (topics.desired(FLEET, B), b"for B") in b.messages, T, "B's own desired")
        # (`roots` is the one topic besides its own `desired` it may read, through `#` too)
        assert {t for t, _p in a.messages} <= {topics.desired(FLEET, A), topics.roots(FLEET)}
        assert [p for t, p in a.messages if t == topics.desired(FLEET, A)] == [b"for A"]
        assert b"poisoned" not in [p for _t, p in b.messages]
        assert _device(srv, B)["labels"]["mark"] == "b-own"  # A's forged report never arrived

        # A newcomer reads the real root chain, not A's garbage.
        c = Client(port, C, user=C, password=password(C))
        c.subscribe(topics.roots(FLEET))
        wait_for(lambda: any(t == topics.roots(FLEET) for t, _p in c.messages), T, "retained roots")
        got = next(p for t, p in c.messages if t == topics.roots(FLEET))
        assert json.loads(got) == srv.keys.root_chain()
    finally:
        for x in (a, b, c):
            if x is not None:
                x.close()


# --- 3. client id bound to the username --------------------------------------------------------
def test_another_devices_client_id_takes_over_nothing(fleet_env):
    """A connects with B's client id, with a clean and with a persistent session (as the agent
    does): B stays connected (so no Last Will fires for it), keeps its subscription, and A is
    simply A."""
    srv, port, password = fleet_env["server"], fleet_env["port"], fleet_env["password"]
    b = Client(port, B, user=B, password=password(B), will_for=B, clean_session=False)
    intruders: list[Client] = []
    try:
        b.subscribe(topics.desired(FLEET, B))
        b.publish(topics.online(FLEET, B), Online(B, True, {}, "x").to_json(), retain=True)
        wait_for(lambda: (_device(srv, B) or {}).get("online") is True, T, "B online")
        for n, clean in enumerate((True, False)):
            a = Client(port, B, user=A, password=password(A), will_for=A, clean_session=clean)
            intruders.append(a)
            assert a.connected.is_set()
            # barriers on B's own connection, after A's CONNACK: B still reports and still reads
            b.publish(topics.status(FLEET, B), _status(B, f"after-a-{n}"))
            wait_for(lambda n=n: _server_saw(srv, B, f"after-a-{n}"), T, "B's report after A connected")
            srv.link.publish(topics.desired(FLEET, B), f"for B {n}".encode(), retain=True)
            wait_for(
                lambda n=n: (topics.desired(FLEET, B), f"for B {n}".encode()) in b.messages, T, "B's desired"
            )
            a.publish(topics.status(FLEET, A), _status(A, f"a-is-a-{n}"))
            wait_for(lambda n=n: _server_saw(srv, A, f"a-is-a-{n}"), T, "A reported as itself")
            assert b.disconnects == 0, "B was disconnected by a client using its client id"
            assert _device(srv, B)["online"] is True
            a.close()
    finally:
        b.close()
        for a in intruders:
            a.close()


def test_a_last_will_on_another_devices_topic_never_fires(fleet_env):
    """A sets its Last Will on B's `online` topic and dies without DISCONNECT: B is not marked
    offline. (amqtt would publish a Will past the ACL, so the embedded broker refuses such a
    CONNECT; Mosquitto accepts it and drops the Will at the ACL.)"""
    srv, port, password = fleet_env["server"], fleet_env["port"], fleet_env["password"]
    b = Client(port, B, user=B, password=password(B), will_for=B)
    try:
        b.publish(topics.online(FLEET, B), Online(B, True, {}, "x").to_json(), retain=True)
        wait_for(lambda: (_device(srv, B) or {}).get("online") is True, T, "B online")
        a = Client(port, A, user=A, password=password(A), will_for=B)
        if fleet_env["kind"] == "embedded":
            assert a.refused
        if a.connected.is_set():
            a.c.loop_stop()
            a.c.socket().close()  # no DISCONNECT: the broker's turn to publish A's Will
            # A's Will is handled when the broker drops that connection, at the latest when A
            # logs in again (a take-over): after this CONNACK it has been sent or dropped.
            again = Client(port, A, user=A, password=password(A))
            again.close()
        b.publish(topics.status(FLEET, B), _status(B, "after-a-died"))
        wait_for(lambda: _server_saw(srv, B, "after-a-died"), T, "B's report")
        assert b.disconnects == 0 and _device(srv, B)["online"] is True
    finally:
        b.close()


# --- 4. the documented Mosquitto configuration ---------------------------------------------------
def _doc_block(text: str, after: str) -> str:
    """The first fenced block following the line that contains `after`."""
    rest = text[text.index(after) :]
    m = re.search(r"```[a-z]*\n(.*?)```", rest, re.S)
    assert m, f"no code block after {after!r}"
    return m.group(1)


def test_documented_mosquitto_config_is_the_tested_one():
    from fleet.mosquitto import SETTINGS, acl_text, conf_text

    doc = (REPO / "docs" / "fleet.md").read_text()
    assert _doc_block(doc, "`acl` (") == acl_text("store-pcs", "fleet-server", ["store-042", "store-043"])
    etc = Path("/etc/mosquitto/edgekit")
    assert _doc_block(doc, "`edgekit.conf` (") == conf_text(etc / "acl", etc / "passwd")
    assert set(SETTINGS) <= set(conf_text(etc / "acl", None).splitlines())
    # No documented ACL grants `roots` through a pattern (Mosquitto 2 warns: no %u or %c in it).
    for path in [REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "deploy").rglob("*")]:
        if path.is_file():
            assert not re.search(r"pattern\s+read\s+\S*/roots", path.read_text(errors="replace")), path


@pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed")
def test_mosquitto_loads_the_config_without_warnings_and_devices_read_roots():
    with mosquitto.Mosquitto(FLEET, {A: "pw-a"}) as m:
        srv = Client(m.port, "srv", user=m.server_user, password=m.server_password)
        srv.publish(topics.roots(FLEET), b"[chain]", retain=True)
        a = Client(m.port, A, user=A, password="pw-a")
        try:
            a.subscribe(topics.roots(FLEET))
            wait_for(lambda: (topics.roots(FLEET), b"[chain]") in a.messages, T, "roots delivered")
        finally:
            a.close()
            srv.close()
        log = m.log_text()
    # (the one warning left is about running as root, which the test launcher does on purpose)
    assert [x for x in log.splitlines() if "Warning" in x and "root/administrator" not in x] == []


# --- 5. enrolment ------------------------------------------------------------------------------
def _cli(*args: str, cfg: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgekit.cli", *args, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _fleet_toml(tmp: Path, port: int, srv_cfg: dict[str, Any]) -> Path:
    path = tmp / "fleet.toml"
    path.write_text(
        f'[server]\nfleet = "{FLEET}"\nstate_dir = "{srv_cfg["server"]["state_dir"]}"\n'
        f"[broker]\nport = {port}\n"
    )
    return path


def test_enroll_bundle_runs_a_real_agent_and_reenrol_revokes_the_old_password(tmp_path):
    from agent.config import load_agent_config
    from agent.daemon import Agent
    from fleet.credentials import open_store

    port = free_port()
    cfg = server_config(tmp_path, port, embedded=True)
    with FleetServer(cfg) as srv:
        toml = _fleet_toml(tmp_path, port, cfg)
        out = tmp_path / "bundle"
        p = _cli("fleet", "devices", "enroll", A, "--out", str(out), "--json", cfg=toml)
        assert p.returncode == 0, p.stderr
        info = json.loads(p.stdout)
        assert info == {
            "device": A,
            "fleet": FLEET,
            "dir": str(out),
            "broker_url": f"mqtt://127.0.0.1:{port}",
            "root_version": 1,
            "tls_ca": False,
            "re_enrolled": False,
        }
        assert sorted(x.name for x in out.iterdir()) == ["enrolment.json", "mqtt.password", "root.json"]
        assert stat.S_IMODE(out.stat().st_mode) == 0o700
        assert stat.S_IMODE((out / "mqtt.password").stat().st_mode) == 0o600
        assert (out / "root.json").read_bytes() == srv.keys.root_json.read_bytes()
        pw = (out / "mqtt.password").read_text().strip()
        assert len(pw) >= 40
        # stored hashed only
        db = srv.state_dir / "credentials.db"
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        store = open_store(srv.state_dir)
        [cred] = store.list()
        store.close()
        assert cred.device == A and cred.hash.startswith("$7$101$") and pw not in cred.hash

        # A real agent configured with nothing but the bundle joins the fleet.
        agent_toml = tmp_path / "agent.toml"
        agent_toml.write_text(
            f'[agent]\nenrolment = "{out}"\ndata_dir = "{tmp_path / "agent"}"\nheartbeat_s = 1.0\n'
            "[server]\nenabled = false\n"
        )
        acfg = load_agent_config(agent_toml)
        assert (acfg["agent"]["device"], acfg["mqtt"]["username"], acfg["mqtt"]["password"]) == (A, A, pw)
        agent = Agent(acfg)
        agent.start()
        try:
            wait_for(lambda: (_device(srv, A) or {}).get("online") is True, T, "the agent online")
        finally:
            agent.stop()

        # Re-enrolling issues a new password: the old one is refused, the new one works.
        p = _cli("fleet", "devices", "enroll", A, "--out", str(tmp_path / "b2"), "--json", cfg=toml)
        assert p.returncode == 0 and json.loads(p.stdout)["re_enrolled"] is True, p.stderr
        new_pw = (tmp_path / "b2" / "mqtt.password").read_text().strip()
        old = Client(port, A, user=A, password=pw)
        assert old.refused
        new = Client(port, A, user=A, password=new_pw)
        assert new.connected.is_set()
        new.close()

        # Revoked: refused at the next connect.
        p = _cli("fleet", "devices", "revoke", A, cfg=toml)
        assert p.returncode == 0, p.stderr
        gone = Client(port, A, user=A, password=new_pw)
        assert gone.refused
    # No password in the store's files. (Read only now: opening and closing a SQLite file from
    # the process that has it open drops that process's POSIX locks on it.)
    stored = b"".join(f.read_bytes() for f in srv.state_dir.glob("credentials.db*"))
    assert stored and pw.encode() not in stored and new_pw.encode() not in stored


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("../etc", "invalid device id"),
        ("a/b", "invalid device id"),
        ("fleet-server", "the fleet server's own MQTT user"),
    ],
)
def test_enroll_refuses_bad_ids_by_name(tmp_path, device, message):
    port = free_port()
    cfg = server_config(tmp_path, port, embedded=True)
    from fleet.keys import KeyStore

    KeyStore(Path(cfg["server"]["state_dir"])).init(FLEET)
    p = _cli(
        "fleet",
        "devices",
        "enroll",
        device,
        "--out",
        str(tmp_path / "x"),
        cfg=_fleet_toml(tmp_path, port, cfg),
    )
    assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr + p.stdout
    assert not (tmp_path / "x").exists()


def test_enroll_before_keys_exist_names_the_fix(tmp_path):
    port = free_port()
    cfg = server_config(tmp_path, port, embedded=True)
    p = _cli(
        "fleet", "devices", "enroll", A, "--out", str(tmp_path / "x"), cfg=_fleet_toml(tmp_path, port, cfg)
    )
    assert p.returncode != 0 and "keys init" in p.stderr and "Traceback" not in p.stderr


def test_bad_bundle_is_a_named_config_error(tmp_path):
    from agent.config import load_agent_config
    from edgekit.errors import ConfigError

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    toml = tmp_path / "agent.toml"
    toml.write_text(f'[agent]\nenrolment = "{bundle}"\n')
    with pytest.raises(ConfigError, match="no enrolment bundle"):
        load_agent_config(toml)
    (bundle / "enrolment.json").write_text(
        json.dumps(
            {
                "fleet": FLEET,
                "device": A,
                "root": "../../etc/passwd",
                "broker": {"url": "mqtt://h", "username": A},
            }
        )
    )
    with pytest.raises(ConfigError, match=r"invalid enrolment bundle .*root"):
        load_agent_config(toml)
    (bundle / "enrolment.json").write_text("[" * 60_000)  # deeper than the JSON parser goes
    with pytest.raises(ConfigError, match="invalid enrolment bundle"):
        load_agent_config(toml)


# --- the Mosquitto files `edgekit fleet mosquitto-config` writes --------------------------------
@pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed")
def test_mosquitto_config_command_admits_enrolled_devices_only(tmp_path):
    state = tmp_path / "state"
    toml = tmp_path / "fleet.toml"
    toml.write_text(
        f'[server]\nfleet = "{FLEET}"\nstate_dir = "{state}"\n'
        '[broker]\nembedded = false\nusername = "fleet-server"\npassword = "srv-secret"\n'
        'public_url = "mqtt://127.0.0.1:1"\n'
    )
    from fleet.keys import KeyStore

    KeyStore(state).init(FLEET)
    assert _cli("fleet", "devices", "enroll", A, "--out", str(tmp_path / "a"), cfg=toml).returncode == 0
    out = tmp_path / "mosq"
    p = _cli("fleet", "mosquitto-config", "--out", str(out), "--json", cfg=toml)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["devices"] == 1
    assert stat.S_IMODE((out / "passwd").stat().st_mode) == 0o600
    pw = (tmp_path / "a" / "mqtt.password").read_text().strip()
    with mosquitto.Mosquitto(FLEET, {}, include_dir=out) as m:
        ok = Client(m.port, A, user=A, password=pw)
        srv = Client(m.port, "srv", user="fleet-server", password="srv-secret")
        bad = Client(m.port, B, user=B, password=pw)
        anon = Client(m.port, "anon")
        try:
            assert ok.connected.is_set() and srv.connected.is_set() and bad.refused and anon.refused
        finally:
            for c in (ok, srv, bad, anon):
                c.close()
        assert "Warning: ACL" not in m.log_text()


def test_bundle_device_mismatch_is_refused(tmp_path):
    from agent.config import load_agent_config
    from edgekit.enrolment import BrokerAccess, Enrolment, write_bundle
    from edgekit.errors import ConfigError

    e = Enrolment(fleet=FLEET, device=A, broker=BrokerAccess(url="mqtt://127.0.0.1:1883", username=A))
    write_bundle(tmp_path / "b", e, root=b"{}", password="pw", ca=None)
    toml = tmp_path / "agent.toml"
    toml.write_text(f'[agent]\ndevice = "{B}"\nenrolment = "{tmp_path / "b"}"\n')
    with pytest.raises(ConfigError, match="is for 'dev-000'"):
        load_agent_config(toml)
