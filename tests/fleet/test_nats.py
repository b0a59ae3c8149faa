"""The clustered broker (issue 11, item 4): a real 3-node nats-server 2.9 cluster on loopback with
its MQTT listener and JetStream, configured by fleet.nats from the same rules as the Mosquitto
ACL (fleet.acl). Clients are paho MQTT 3.1.1 (NATS 2.9 speaks nothing newer).

Every "nothing arrived" is checked after a barrier: a later message on the same connection that
did arrive (one client's messages are stored and delivered in order), never after a sleep."""

from __future__ import annotations

import socket

import pytest

from edgekit import topics
from fleet import nats
from fleet.acl import Access, allowed
from fleet.errors import FleetError
from tests.fleet.conftest import FLEET
from tests.fleet.helpers import wait_for
from tests.fleet.test_broker_security import Client
from tests.support import nats as nats_support

pytestmark = pytest.mark.timeout(120)
T = 30.0
A, B = "dev-a", "dev-b"
PASSWORDS = {A: "pw-a", B: "pw-b"}
SERVER = "fleet-server"


# --- the configuration, as pure functions ---------------------------------------------------------
@pytest.mark.parametrize(
    ("topic", "subjects"),
    [
        ("edgekit/f1/devices/dev-a/desired", ("edgekit.f1.devices.dev-a.desired",)),
        ("edgekit/f1/devices/+/status", ("edgekit.f1.devices.*.status",)),
        ("edgekit/f1/#", ("edgekit.f1.>", "edgekit.f1")),
        ("#", (">",)),
        ("/a//b/", ("/.a./.b./",)),  # empty levels, as nats-server 2.9 maps them
    ],
)
def test_topic_to_subject(topic, subjects):
    assert nats.topic_subjects(topic) == subjects


def test_a_dot_in_a_name_is_refused_not_mismapped():
    with pytest.raises(ValueError, match=r"refuses '\.'"):
        nats.topic_subjects("edgekit/f1/devices/a.b/status")
    with pytest.raises(FleetError, match=r"contains '\.'"):
        nats.device_user(FLEET, "store.42", "$2b$04$x")


def test_permissions_are_the_acl():
    """For every topic either user might touch, the NATS allow-lists say what fleet.acl says."""
    users = {u.name: u for u in nats.users_for(FLEET, SERVER, "h", [(A, "h"), (B, "h")])}
    candidates = [topics.roots(FLEET), f"{topics.PREFIX}/{FLEET}", f"{topics.PREFIX}/other/roots"]
    candidates += [
        topics.device_topic(FLEET, d, k) for d in (A, B) for k in ("desired", "status", "online", "x")
    ]
    for name, user in users.items():
        for topic in candidates:
            (subject,) = nats.topic_subjects(topic)
            for access, grant in ((Access.WRITE, user.publish), (Access.READ, user.subscribe)):
                granted = subject in grant or (name == SERVER and subject.startswith(f"edgekit.{FLEET}."))
                assert granted == allowed(FLEET, name, SERVER, topic, access), (name, topic, access)
        assert not any("*" in s or ">" in s for s in user.publish if name != SERVER)


# --- the cluster ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    if not nats_support.available():
        pytest.skip("nats-server not installed (scripts/system-deps.sh installs it)")
    with nats_support.NatsCluster(FLEET, PASSWORDS, server_user=SERVER) as c:
        yield c


def _login(c: nats_support.NatsCluster, node: str, user: str, client_id: str | None = None) -> Client:
    password = c.server_password if user == SERVER else PASSWORDS[user]
    return Client(c.node(node).mqtt_port, client_id or user, user=user, password=password)


def test_wrong_credentials_are_refused(cluster):
    port = cluster.node("n2").mqtt_port
    for client in (
        Client(port, A, user=A, password="not-it"),
        Client(port, "ghost", user="ghost", password="pw"),
        Client(port, "anon"),
        Client(port, SERVER, user=SERVER, password=PASSWORDS[A]),
    ):
        assert client.refused, client.rc
        client.close()


def test_a_device_password_cannot_open_a_plain_nats_connection(cluster):
    """allowed_connection_types: MQTT only; over NATS `$MQTT.sub.>` would be readable."""
    with socket.create_connection(("127.0.0.1", cluster.node("n1").port), timeout=T) as s:
        f = s.makefile("rwb")
        assert f.readline().startswith(b"INFO ")
        f.write(b'CONNECT {"verbose":false,"user":"%s","pass":"%s"}\r\nPING\r\n' % (A.encode(), b"pw-a"))
        f.flush()
        assert b"Authorization Violation" in f.readline()


def test_qos1_status_reaches_the_fleet_on_another_node(cluster):
    fleet = _login(cluster, "n1", SERVER)
    a = _login(cluster, "n2", A)
    try:
        fleet.subscribe(topics.all_devices(FLEET, topics.STATUS))
        a.publish(topics.status(FLEET, A), b"a-status-1")
        wait_for(lambda: (topics.status(FLEET, A), b"a-status-1") in fleet.messages, T, "A's status on n1")
    finally:
        a.close()
        fleet.close()


def test_device_stays_inside_its_own_topics(cluster):
    """A cannot read B's desired (SUBACK 0x80) nor write B's status or desired: NATS drops such a
    publish (still PUBACKed) and keeps the connection open."""
    fleet = _login(cluster, "n1", SERVER)
    a = _login(cluster, "n3", A)
    try:
        fleet.subscribe(topics.all_devices(FLEET, topics.STATUS))
        codes = a.subscribe(topics.desired(FLEET, B), "#", topics.all_devices(FLEET, topics.DESIRED))
        assert all(rc.is_failure for rc in codes), codes
        assert [rc.is_failure for rc in a.subscribe(topics.desired(FLEET, A))] == [False]
        a.publish(topics.status(FLEET, B), b"forged-by-a")
        a.publish(topics.desired(FLEET, B), b"poisoned", retain=True)
        a.publish(topics.status(FLEET, A), b"a-barrier")
        wait_for(lambda: (topics.status(FLEET, A), b"a-barrier") in fleet.messages, T, "A's barrier")
        assert [p for t, p in fleet.messages if t == topics.status(FLEET, B)] == []
        assert a.disconnects == 0 and a.c.is_connected()

        fleet.publish(topics.desired(FLEET, B), b"for B", retain=True)
        b = _login(cluster, "n2", B)
        try:
            b.subscribe(topics.desired(FLEET, B))
            wait_for(lambda: any(t == topics.desired(FLEET, B) for t, _p in b.messages), T, "B's desired")
            assert [p for _t, p in b.messages] == [b"for B"]
        finally:
            b.close()
        assert "Publish Violation" in cluster.log_text("n3")
    finally:
        a.close()
        fleet.close()


def test_another_devices_client_id_disconnects_it_but_reads_nothing(cluster):
    """NATS 2.9 cannot bind the client id to the username (fleet.nats): A logging in with B's
    client id takes B's session over (B is disconnected), but B's subscription is re-made under
    A's permissions and refused, so B's desired never reaches A."""
    fleet = _login(cluster, "n1", SERVER)
    b = Client(cluster.node("n1").mqtt_port, B, user=B, password=PASSWORDS[B], clean_session=False)
    a = None
    try:
        b.subscribe(topics.desired(FLEET, B))
        a = Client(cluster.node("n2").mqtt_port, B, user=A, password=PASSWORDS[A], clean_session=False)
        assert a.connected.is_set()
        wait_for(lambda: b.disconnects >= 1, T, "B disconnected by the take-over")
        b.c.loop_stop()  # paho would reconnect as B and take the session back

        a.subscribe(topics.desired(FLEET, A))
        fleet.publish(topics.desired(FLEET, B), b"for B only", retain=True)
        fleet.publish(topics.desired(FLEET, A), b"for A", retain=True)
        wait_for(lambda: (topics.desired(FLEET, A), b"for A") in a.messages, T, "A's own desired")
        real_b = _login(cluster, "n3", B, client_id="dev-b-2")
        try:
            real_b.subscribe(topics.desired(FLEET, B))
            wait_for(lambda: (topics.desired(FLEET, B), b"for B only") in real_b.messages, T, "B's desired")
        finally:
            real_b.close()
        assert {t for t, _p in a.messages} == {topics.desired(FLEET, A)}
    finally:
        for c in (a, b, fleet):
            if c is not None:
                c.close()


def test_retained_desired_is_replicated_and_survives_losing_the_meta_leader(cluster):
    """Published on node 1, read by a new subscriber on node 3; then the JetStream metadata
    leader is killed and a new subscriber on each surviving node still gets it. Right after the
    loss a QoS 1 SUBSCRIBE can get SUBACK 0x80 (its JetStream consumer timed out while the
    groups re-elect): clients must retry it, as this one does. Last: it kills a node."""
    desired = topics.desired(FLEET, A)
    fleet = _login(cluster, "n1", SERVER)
    try:
        fleet.publish(desired, b"manifest-7", retain=True)
    finally:
        fleet.close()

    def subscribed(node: str) -> Client | None:
        a = _login(cluster, node, A)
        if not a.subscribe(desired)[0].is_failure:
            return a
        a.close()  # JetStream still electing after the loss: the consumer timed out; try again
        return None

    def read_retained(node: str) -> None:
        clients: list[Client | None] = []
        wait_for(lambda: clients.append(subscribed(node)) or clients[-1], T, f"a subscription on {node}")
        a = clients[-1]
        assert a is not None
        try:
            wait_for(lambda: (desired, b"manifest-7") in a.messages, T, f"retained desired on {node}")
        finally:
            a.close()

    read_retained("n3")
    leader = cluster.meta_leader()
    assert leader is not None
    cluster.kill(leader)
    survivors = cluster.alive()
    assert len(survivors) == 2
    wait_for(lambda: cluster.meta_leader(survivors) not in (None, leader), T, "a new meta leader")
    for node in survivors:
        read_retained(node.name)
