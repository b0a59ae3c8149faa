"""MQTT over TLS with client certificates (mTLS) against a real Mosquitto: the fleet server
(`[broker] tls/ca/cert/key`) and a real in-process agent (`[mqtt] tls/ca/cert/key`) roll out a
real conversion; a certificate from another CA, or none, is refused; the certificate CN is the
MQTT username, so a device certificate cannot publish on another device's topics (MQTT v5
reason codes). The CAs and certificates are made here with `cryptography`."""

from __future__ import annotations

import copy
import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgekit import topics
from edgekit.protocol import Status
from fleet.errors import FleetError
from fleet.server import FleetServer
from tests.fleet.conftest import FLEET, server_config
from tests.fleet.helpers import wait_for
from tests.support import mosquitto

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed"),
]
T = 30.0


# --- a throwaway PKI --------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(b: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return b.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))


class CA:
    """A self-signed CA in `folder`; `issue` writes `<cn>.pem` + `<cn>.key` (0600) there."""

    def __init__(self, cn: str, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.key = folder, ec.generate_private_key(ec.SECP256R1())
        pub = self.key.public_key()
        b = x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(pub)
        b = _validity(b.serial_number(x509.random_serial_number()))
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        self.cert = b.sign(self.key, hashes.SHA256())
        self.pem = folder / "ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
        b = _validity(b.public_key(key.public_key()).serial_number(x509.random_serial_number()))
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
        )
        if server:
            san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert, key_file = self.folder / f"{cn}.pem", self.folder / f"{cn}.key"
        cert.write_bytes(b.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_file.chmod(0o600)
        return cert, key_file


class Pki:
    def __init__(self, folder: Path):
        self.ca = CA("edgekit-test-ca", folder / "ca")
        self.server = self.ca.issue("127.0.0.1", server=True)
        self.fleet = self.ca.issue("fleet-server")
        self.dev1 = self.ca.issue("dev-1")
        self.dev2 = self.ca.issue("dev-2")
        self.other_ca = CA("other-ca", folder / "other")
        self.rogue = self.other_ca.issue("dev-1")  # claims to be dev-1, signed by the wrong CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(pki: Pki) -> Iterator[mosquitto.Mosquitto]:
    tls = mosquitto.TlsFiles(pki.ca.pem, *pki.server)
    with mosquitto.Mosquitto(FLEET, {}, tls=tls) as m:
        yield m


def fleet_cfg(tmp: Path, pki: Pki, port: int, cert: tuple[Path, Path]) -> dict[str, Any]:
    # No username: with use_identity_as_username the certificate CN (fleet-server) is the user.
    return server_config(
        tmp, port, embedded=False, tls=True, ca=str(pki.ca.pem), cert=str(cert[0]), key=str(cert[1])
    )


def agent_cfg(tmp: Path, root: Path, device: str, port: int, ca: Path, cert: tuple[Path, Path]) -> dict:
    from agent.config import DEFAULTS

    cfg = copy.deepcopy(DEFAULTS)
    cfg["agent"].update(
        device=device,
        fleet=FLEET,
        data_dir=str(tmp / device),
        root=str(root),
        formats=["onnx"],
        heartbeat_s=5.0,
        labels={"site": "tls"},
    )
    cfg["server"].update(enabled=False)
    cfg["mqtt"].update(port=port, tls=True, ca=str(ca), cert=str(cert[0]), key=str(cert[1]), keepalive=5)
    return cfg


# --- the happy path ---------------------------------------------------------------------------
def test_rollout_of_a_real_conversion_over_mtls(tmp_path, pki, broker):
    from agent.daemon import Agent
    from converters.pipeline import convert

    out = tmp_path / "conv"
    report = convert("sample:digits", targets=["onnx"], modes=["none"], out=out)
    assert report.ok
    with FleetServer(fleet_cfg(tmp_path, pki, broker.port, pki.fleet)) as srv:
        srv.registry.publish(out, "digits", "1.0.0")  # what `edgekit fleet publish` does
        agent = Agent(agent_cfg(tmp_path, srv.keys.root_json, "dev-1", broker.port, pki.ca.pem, pki.dev1))
        agent.start()
        try:
            wait_for(lambda: any(d["id"] == "dev-1" for d in srv.devices.list()), T, "dev-1 registered")
            rid = srv.engine.start("digits", "1.0.0", {"site": "tls"}, [100], 1.0, 0.0, 600)
            srv.kick()
            wait_for(lambda: srv.engine.status(rid)["state"] == "completed", T, "rollout completed")
            assert srv.engine.status(rid)["totals"]["active"] == 1
            st = agent.updater.states.get("digits")
            assert st.state == "active" and st.version == "1.0.0"
            dev = next(d for d in srv.devices.list() if d["id"] == "dev-1")
            assert dev["state"] == "active" and dev["version"] == "1.0.0", dev
            spec = agent.registry.get("digits").inputs[0]
            res = agent.engine.infer("digits", {spec.name: np.zeros(spec.fixed_shape(), spec.dtype)})
            assert res.served_by == "local" and res.model_version == "1.0.0"
        finally:
            agent.stop()


# --- refused certificates ---------------------------------------------------------------------
def _tls_session_alert(port: int, trust: Path, cert: tuple[Path, Path] | None) -> str:
    """Handshake, then read: TLS 1.3 reports a rejected client certificate as an alert on the
    first read. Returns the ssl error's reason ('' if the broker let the session stand)."""
    ctx = ssl.create_default_context(cafile=str(trust))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.settimeout(1.0)
                s.recv(1)
        except ssl.SSLError as e:
            return str(e.reason)
        except TimeoutError:
            return ""
    return "closed"


def test_certificates_from_another_ca_or_none_are_refused(tmp_path, pki, broker):
    from agent.daemon import Agent

    port = broker.port
    assert _tls_session_alert(port, pki.ca.pem, pki.dev1) == ""  # the control: a good cert
    assert _tls_session_alert(port, pki.ca.pem, pki.rogue) == "TLSV1_ALERT_UNKNOWN_CA"
    assert _tls_session_alert(port, pki.ca.pem, None) == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    # nor does a client that trusts only the other CA accept the broker
    assert _tls_session_alert(port, pki.other_ca.pem, pki.rogue) == "CERTIFICATE_VERIFY_FAILED"

    # The fleet server with a certificate of the other CA fails at start, fast, and says why: the
    # TLS error paho saw (the unknown-CA alert, or an EOF when the broker's close wins the race).
    t0 = time.monotonic()
    rogue = FleetServer(fleet_cfg(tmp_path / "rogue-fleet", pki, port, pki.rogue))
    with pytest.raises(FleetError, match=r"did not accept the connection: failed to receive .*_ssl\.c"):
        rogue.start()
    assert time.monotonic() - t0 < 5  # it used to retry for the whole 10 s, then say nothing

    # An agent with it never gets a session; it keeps retrying and records the cause.
    agent = Agent(agent_cfg(tmp_path, rogue.keys.root_json, "dev-1", port, pki.ca.pem, pki.rogue))
    agent.start()
    try:
        wait_for(lambda: "_ssl.c" in (agent.mqtt.last_error or ""), T, "agent recorded the TLS error")
        assert not agent.mqtt.connected.is_set()
    finally:
        agent.stop()


# --- identity as username: the per-device ACL -------------------------------------------------
class V5Device:
    """A raw MQTT v5 client over mTLS that records PUBACK reason codes."""

    def __init__(self, port: int, pki: Pki, cert: tuple[Path, Path], client_id: str, username: str = ""):
        self.acks: dict[int, Any] = {}
        self.rc: Any = None
        self.connected = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=str(pki.ca.pem), certfile=str(cert[0]), keyfile=str(cert[1]))
        if username:
            c.username_pw_set(username)
        c.on_connect = self._on_connect
        c.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc)
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.c = c
        assert self.connected.wait(10), "no CONNACK"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.rc = rc
        self.connected.set()

    def publish(self, topic: str, payload: bytes) -> Any:
        mid = self.c.publish(topic, payload, qos=1).mid
        wait_for(lambda: mid in self.acks, 10, "PUBACK")
        return self.acks[mid]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_device_certificate_is_the_identity_for_the_acl(pki, broker):
    def status(dev: str) -> bytes:
        return Status(device=dev, state="failed", reason="forged").to_json()

    d1 = V5Device(broker.port, pki, pki.dev1, "c-dev-1")
    # A client that claims to be dev-2 in its username is still dev-1: the certificate decides.
    liar = V5Device(broker.port, pki, pki.dev1, "c-liar", username="dev-2")
    d2 = V5Device(broker.port, pki, pki.dev2, "c-dev-2")
    try:
        assert not d1.rc.is_failure and not d2.rc.is_failure and not liar.rc.is_failure
        assert not d1.publish(topics.status(FLEET, "dev-1"), status("dev-1")).is_failure
        assert not d2.publish(topics.status(FLEET, "dev-2"), status("dev-2")).is_failure
        for client in (d1, liar):
            rc = client.publish(topics.status(FLEET, "dev-2"), status("dev-2"))
            assert rc.is_failure and rc.value == 135, rc  # 0x87 Not authorized
        rc = d1.publish(topics.desired(FLEET, "dev-1"), b"{}")  # devices never write desired
        assert rc.is_failure and rc.value == 135, rc
    finally:
        for client in (d1, liar, d2):
            client.close()
