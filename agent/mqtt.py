"""The agent's MQTT link (paho-mqtt 2.x, callback API v2, MQTT 3.1.1 or 5).

- Fixed client id and a persistent session (v3.1.1 clean_session=False; v5 clean_start=False
  plus a session expiry, otherwise a v5 session is lost on broker restart): QoS 1 manifests
  published while the device was offline are delivered when it comes back.
- Last Will on the retained `online` topic = offline; on every (re)connect it publishes
  online=true retained and re-subscribes (cheap, and correct even if the broker lost the session).
- paho's network thread reconnects with backoff on its own; callbacks only enqueue work so a
  slow download never blocks keepalives. With `[mqtt] urls` (the nodes of a clustered broker)
  every drop or failed connect moves to the next URL (edgekit.brokers.Failover).
- A refused SUBSCRIBE (SUBACK 0x80: NATS during a JetStream leader election) is retried with a
  bounded backoff; the connection stays up, so nothing else would retry it.
- The client id is the username when there is one: Mosquitto and the embedded broker force that
  anyway, and NATS (which cannot) then lets no other device's id collide with this session.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import __version__
from edgekit import topics
from edgekit.brokers import Failover, Resubscriber, endpoints
from edgekit.protocol import Online, last_will

log = logging.getLogger(__name__)


@dataclass
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    urls: list[str] = field(default_factory=list)  # several nodes: tried in turn (edgekit.brokers)
    protocol: str = "5"  # "5" or "3.1.1"
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure: bool = False
    keepalive: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    # A broker that accepted the TCP connection but has not answered CONNECT by then is said to
    # ignore it (amqtt, the embedded broker, hangs on an MQTT 5 CONNECT): logged once per socket.
    connack_timeout_s: float = 10.0
    # QoS of the `desired` and `roots` subscriptions. Both topics are retained and the agent
    # subscribes again on every connect, so QoS 0 loses nothing: a manifest missed while away
    # comes back as the retained message. nats-server 2.9 creates a JetStream consumer for each
    # QoS 1 subscription, through one node, which stalls past a few thousand devices (measured:
    # bench/fleet.py); a NATS fleet's enrolment bundles therefore say 0.
    desired_qos: int = 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MqttSettings:
        known = set(cls.__dataclass_fields__)
        clean = {k: (v if v != "" else None) for k, v in d.items() if k in known}
        clean = {k: v for k, v in clean.items() if v is not None}
        if "protocol" in clean:
            clean["protocol"] = str(clean["protocol"])
        return cls(**clean)


class AgentMqtt:
    def __init__(
        self,
        settings: MqttSettings,
        *,
        fleet: str,
        device: str,
        on_desired: Callable[[bytes], None],
        on_roots: Callable[[bytes], None] | None = None,
        labels: dict[str, str] | None = None,
        on_connection: Callable[[bool], None] | None = None,
    ):
        self.s = settings
        self.fleet, self.device = fleet, device
        self.labels = labels or {}
        self.on_desired, self.on_roots, self.on_connection = on_desired, on_roots, on_connection
        self.t_desired = topics.desired(fleet, device)
        self.t_status = topics.status(fleet, device)
        self.t_online = topics.online(fleet, device)
        self.t_roots = topics.roots(fleet)
        self.connected = threading.Event()
        self.last_error: str | None = None  # paho's last socket/TLS error, e.g. an unknown CA
        self.v5 = self.s.protocol.startswith("5")
        self.failover = Failover(endpoints(self.s.urls, self.s.host, self.s.port, self.s.tls))
        self.resubscriber = Resubscriber(self._resubscribe)  # SUBACK 0x80 (NATS JetStream elections)
        cid = self.s.client_id or self.s.username or f"edgekit-agent-{device}"
        if self.v5:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        else:
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311, clean_session=False
            )
        c = self.client
        if self.s.username:
            c.username_pw_set(self.s.username, self.s.password)
        if self.s.tls or self.failover.current.tls:  # else plain MQTT even with ca/cert configured
            c.tls_set(
                ca_certs=self.s.ca,
                certfile=self.s.cert,
                keyfile=self.s.key,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            if self.s.insecure:
                c.tls_insecure_set(True)
        c.will_set(self.t_online, last_will(device), qos=1, retain=True)
        c.reconnect_delay_set(self.s.reconnect_min_s, self.s.reconnect_max_s)
        c.max_queued_messages_set(1000)  # status reports made while offline are sent on reconnect
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_log = self._on_log
        c.on_socket_open = self._on_socket_open
        c.on_subscribe = self._on_subscribe
        c.on_connect_fail = lambda client, _ud: self.failover.advance(client)
        self._connack_timer: threading.Timer | None = None

    def start(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.s.session_expiry_s
            kwargs = {"clean_start": False, "properties": props}
        # connect_async + loop_start: a broker that is down at boot is retried, not fatal
        ep = self.failover.current
        self.client.connect_async(ep.host, ep.port, keepalive=self.s.keepalive, **kwargs)
        self.client.loop_start()

    def stop(self, graceful: bool = True) -> None:
        if graceful and self.connected.is_set():
            info = self.client.publish(self.t_online, last_will(self.device), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass
        self._cancel_connack_timer()
        self.resubscriber.cancel()
        self.client.disconnect()
        self.client.loop_stop()

    def publish_status(self, msg: dict[str, Any]) -> None:
        self.client.publish(self.t_status, json.dumps(msg, separators=(",", ":")), qos=1)

    # callbacks (paho network thread) ---------------------------------------------------------
    def _on_socket_open(self, client, userdata, sock) -> None:
        self._cancel_connack_timer()
        self._connack_timer = threading.Timer(self.s.connack_timeout_s, self._no_connack)
        self._connack_timer.daemon = True
        self._connack_timer.start()

    def _cancel_connack_timer(self) -> None:
        if self._connack_timer is not None:
            self._connack_timer.cancel()
            self._connack_timer = None

    def _no_connack(self) -> None:
        if self.connected.is_set():
            return
        self.last_error = f"no answer to the MQTT {self.s.protocol} CONNECT in {self.s.connack_timeout_s:g} s"
        log.error("MQTT broker %s: %s%s", self.failover.current, self.last_error, self._protocol_hint())

    def _protocol_hint(self) -> str:
        if not self.v5:
            return ""
        return (
            "; a broker that speaks only MQTT 3.1.1 (the embedded broker of `edgekit fleet serve`, "
            'NATS) ignores or refuses MQTT 5: set [mqtt] protocol = "3.1.1"'
        )

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._cancel_connack_timer()
        if reason_code.is_failure:
            # e.g. "Bad user name or password" after a re-enrolment or a revocation: say it,
            # keep it in last_error; paho retries with backoff (a new bundle may come).
            self.last_error = f"connect refused: {reason_code}"
            if "protocol version" in str(reason_code).lower():
                log.error(
                    "MQTT connect refused by %s: %s%s",
                    self.failover.current,
                    reason_code,
                    self._protocol_hint(),
                )
            else:
                log.warning("MQTT connect refused by %s: %s", self.failover.current, reason_code)
            return
        log.info(
            "MQTT connected to %s (session present: %s)",
            self.failover.current,
            getattr(flags, "session_present", None),
        )
        self.resubscriber.reset()
        self._subscribe()
        online = Online(device=self.device, online=True, labels=self.labels, agent_version=__version__)
        client.publish(self.t_online, online.to_json(), qos=1, retain=True)
        self.connected.set()
        if self.on_connection:
            self.on_connection(True)

    def _subscribe(self) -> None:
        self.client.subscribe([(self.t_desired, self.s.desired_qos), (self.t_roots, self.s.desired_qos)])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        delay = self.resubscriber.on_suback(reason_codes)
        if delay == 0.0:
            return
        if delay is None:
            self.last_error = f"the broker refused the subscription {self.resubscriber.attempt} times"
            log.error("MQTT %s: %s; waiting for a reconnect", self.failover.current, self.last_error)
            return
        log.warning("MQTT %s refused the subscription; again in %.1f s", self.failover.current, delay)

    def _resubscribe(self) -> None:
        if self.connected.is_set():  # else the next on_connect subscribes anyway
            self._subscribe()

    def _on_log(self, client, userdata, level: int, buf: str) -> None:
        # A refused client certificate surfaces only here (TLS 1.3 reports it on the first read
        # and the disconnect says "Unspecified error"): keep it and say it.
        if level == mqtt.MQTT_LOG_ERR and not buf.startswith("Client is not connected"):
            self.last_error = buf
            log.warning("MQTT: %s", buf)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.resubscriber.cancel()
        nxt = self.failover.advance(client)
        log.info("MQTT disconnected (%s); paho reconnects to %s", reason_code, nxt)
        if self.on_connection:
            self.on_connection(False)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.t_desired:
            self.on_desired(bytes(msg.payload))
        elif msg.topic == self.t_roots and self.on_roots:
            self.on_roots(bytes(msg.payload))
