"""Enrol a device: new MQTT credentials (the fleet keeps only the hash) and the bundle the device
runs with (edgekit.enrolment: root.json, password, broker URL, CA when TLS).

Works on the state directory like `keys` and `publish`, with or without a running server: the
embedded broker checks every CONNECT against the credential store, so a new device can connect
at once. With an external Mosquitto, `edgekit fleet mosquitto-config` renders the password file.
With NATS (`[broker] kind = "nats"`) ids must also be NATS-safe (no '.'), and when `[broker]
nats_dir` is set, enrolment and revocation rewrite its accounts.conf: reload the nodes (SIGHUP).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit import topics
from edgekit.enrolment import BrokerAccess, Bundle, Enrolment, broker_address, write_bundle
from fleet import config as fleet_config
from fleet.credentials import new_password, open_store
from fleet.errors import FleetError
from fleet.keys import KeyStore

UNSPECIFIED_HOSTS = ("", "0.0.0.0", "::")


def broker_url(cfg: dict[str, Any]) -> str:
    """The broker URL devices are told: `[broker] public_url`, else the first of `urls`, else
    mqtt(s)://host:port."""
    b = cfg["broker"]
    # A cluster's first node: the bundle holds one URL; list every node in the agent's [mqtt] urls.
    url = str(b.get("public_url") or (b.get("urls") or [""])[0])
    if not url:
        host = str(b["host"])
        if host in UNSPECIFIED_HOSTS:
            raise FleetError(
                f"[broker] host is {host!r}, which devices cannot connect to",
                hint='set [broker] public_url, e.g. "mqtt://fleet.example.com:1883"',
            )
        host = f"[{host}]" if ":" in host else host
        url = f"{'mqtts' if b['tls'] else 'mqtt'}://{host}:{int(b['port'])}"
    try:
        broker_address(url)
    except ValueError as e:
        raise FleetError(f"[broker] public_url: {e}") from None
    return url


@dataclass(frozen=True)
class Enrolled:
    bundle: Bundle
    root_version: int
    re_enrolled: bool  # the device had credentials before: they no longer work

    def to_dict(self) -> dict[str, Any]:
        e = self.bundle.enrolment
        return {
            "device": e.device,
            "fleet": e.fleet,
            "dir": str(self.bundle.dir),
            "broker_url": e.broker.url,
            "root_version": self.root_version,
            "tls_ca": e.broker.ca is not None,
            "re_enrolled": self.re_enrolled,
        }


def enrol_device(cfg: dict[str, Any], device: str, out: Path, url: str | None = None) -> Enrolled:
    try:
        topics.check_name("device id", device)
    except ValueError as e:
        raise FleetError(str(e)) from None
    if cfg["broker"].get("kind") == "nats":
        from fleet.nats import check_name

        check_name("device id", device)
    if device == fleet_config.server_user(cfg):
        raise FleetError(f"{device!r} is the fleet server's own MQTT user, not a device id")
    state = fleet_config.state_dir(cfg)
    keys = KeyStore(state)
    root = keys.current_root()  # no keys yet: a FleetError with the `keys init` hint
    b = cfg["broker"]
    ca: bytes | None = None
    if b["tls"] and b["ca"]:
        try:
            ca = Path(b["ca"]).expanduser().read_bytes()
        except OSError as e:
            raise FleetError(f"cannot read [broker] ca {b['ca']}: {e.strerror}") from None
    if url is not None:
        try:
            broker_address(url)
        except ValueError as e:
            raise FleetError(str(e)) from None
    enrolment = Enrolment(
        fleet=cfg["server"]["fleet"],
        device=device,
        broker=BrokerAccess(
            url=url or broker_url(cfg),
            username=device,
            ca="ca.pem" if ca else None,
            # amqtt and nats-server 2.9 speak MQTT 3.1.1 only
            protocol="3.1.1" if b["embedded"] or b.get("kind") == "nats" else None,
            # NATS makes a JetStream consumer per QoS 1 subscription (see agent.mqtt.MqttSettings)
            desired_qos=0 if b.get("kind") == "nats" else None,
        ),
    )
    password = new_password()
    store = open_store(state)
    try:
        again = store.has(device)
        # The bundle first, the hash second: if writing the bundle fails, the device's current
        # credentials still work.
        bundle = write_bundle(
            Path(out).expanduser(), enrolment, root=keys.root_json.read_bytes(), password=password, ca=ca
        )
        store.set_password(device, password)
    except OSError as e:
        raise FleetError(f"cannot write the enrolment bundle to {out}: {e.strerror}") from None
    finally:
        store.close()
    _rewrite_nats_accounts(cfg)
    return Enrolled(bundle, root.version, again)


def revoke_device(cfg: dict[str, Any], device: str) -> bool:
    """Forget the device's credentials: its next CONNECT is refused (a live session lasts until
    it disconnects)."""
    store = open_store(fleet_config.state_dir(cfg))
    try:
        gone = store.revoke(device)
    finally:
        store.close()
    _rewrite_nats_accounts(cfg)
    return gone


def _rewrite_nats_accounts(cfg: dict[str, Any]) -> None:
    from fleet.nats import rewrite_accounts

    try:
        rewrite_accounts(cfg)
    except OSError as e:
        raise FleetError(
            f"the credentials changed but {cfg['broker']['nats_dir']}/accounts.conf could not be written: {e}",
            hint="fix it, then run `edgekit fleet nats-config` and reload the NATS nodes",
        ) from None
