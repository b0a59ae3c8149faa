"""The fleet server's MQTT connection (paho-mqtt 2.x, MQTT 3.1.1 so the embedded broker works too).

With `[broker] urls` (the nodes of a clustered broker) the first connect tries each in turn and
every later drop moves to the next one (edgekit.brokers.Failover). A refused SUBSCRIBE (SUBACK
0x80: NATS while JetStream elects a leader) is retried with a bounded backoff.

With `on_delivery` instead of `on_message` the link acknowledges by hand (paho's manual ack):
the PUBACK of a QoS 1 message goes out only when the caller calls `ack(receipt)`, after its
commit, so a message received but not yet committed when the process dies is still the
broker's, and redelivered to the persistent session's next holder.
"""

from __future__ import annotations

import itertools
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from edgekit.brokers import Failover, Resubscriber, endpoints
from fleet.errors import FleetError
from fleet.outbox import INFLIGHT_WINDOW

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]


@dataclass(frozen=True)
class Receipt:
    """What acknowledging one delivered message takes: its packet id on the connection it came on."""

    mid: int
    qos: int
    connection: int  # which connection (of any link) it came on: a packet id means nothing on another


_connections = itertools.count(1)  # numbers every successful connect of every link in the process


DeliveryHandler = Callable[[str, bytes, Receipt], None]


class MqttLink:
    def __init__(
        self,
        broker: dict[str, Any],
        on_message: MessageHandler | None,
        subscriptions: list[str],
        on_reconnect: Callable[[], None] | None = None,
        on_delivery: DeliveryHandler | None = None,
    ):
        """`on_reconnect` is called on paho's network thread after every successful connect but
        the first (the broker may have lost its retained messages): it must only hand work off.
        `on_delivery` (instead of `on_message`): every message comes with a Receipt that the
        caller passes to `ack()` once it has committed the message."""
        if (on_message is None) == (on_delivery is None):
            raise ValueError("MqttLink takes exactly one of on_message and on_delivery")
        self.cfg = broker
        self.subscriptions = subscriptions
        self._on_message = on_message
        self._on_delivery = on_delivery
        self._on_reconnect = on_reconnect
        self.connects = 0
        self._connection = 0  # the number of the connection up now (or last up)
        self._down_since: float | None = None  # monotonic time of the last drop, while down
        self.failover = Failover(endpoints(broker.get("urls") or [], broker["host"], broker["port"]))
        self.resubscriber = Resubscriber(lambda: self._connected.is_set() and self._subscribe())
        self._connected = threading.Event()
        self._settled = threading.Event()  # the first connect succeeded or was refused
        self._failed: str | None = None
        self.last_error: str | None = None  # paho's last socket/TLS error, e.g. an unknown CA
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=broker["client_id"],
            protocol=mqtt.MQTTv311,
            # A persistent session (fixed client id, clean_session=False) makes the broker queue
            # QoS 1 status messages while the server restarts, so no report is lost.
            clean_session=not broker.get("persistent_session", True),
            manual_ack=on_delivery is not None,
        )
        if broker.get("username"):
            c.username_pw_set(broker["username"], broker.get("password") or None)
        if broker.get("tls") or self.failover.current.tls:
            c.tls_set(
                ca_certs=broker.get("ca") or None,
                certfile=broker.get("cert") or None,
                keyfile=broker.get("key") or None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        # Thousands of retained desired messages go out at rollout start: do not throttle them
        # to paho's default window of 20 unacknowledged messages.
        c.max_inflight_messages_set(INFLIGHT_WINDOW)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(0.5, 10)
        c.on_connect = self._connected_cb
        c.on_disconnect = self._disconnected_cb
        c.on_message = self._message_cb
        c.on_log = self._log_cb
        c.on_subscribe = self._subscribed_cb
        c.on_connect_fail = lambda client, _ud: self.failover.advance(client)
        self.client = c

    def _connected_cb(self, client: mqtt.Client, _ud: Any, _flags: Any, rc: Any, _props: Any = None) -> None:
        if rc.is_failure:
            self._failed = str(rc)
            log.error("broker refused the connection: %s", rc)
            self._settled.set()
            return
        # (Re)subscribe on every connect: cheap, and right even when the session was lost.
        self.resubscriber.reset()
        self._subscribe()
        self.connects += 1
        self._connection = next(_connections)
        self._down_since = None
        self._connected.set()
        self._settled.set()
        log.info("connected to broker %s", self.failover.current)
        if self.connects > 1 and self._on_reconnect is not None:
            try:
                self._on_reconnect()
            except Exception:  # never kill paho's network thread
                log.exception("error in the reconnect handler")

    def _subscribe(self) -> None:
        if self.subscriptions:  # a publish-only link (paho refuses an empty topic list)
            self.client.subscribe([(topic, 1) for topic in self.subscriptions])

    def _subscribed_cb(self, _c: mqtt.Client, _ud: Any, _mid: int, codes: Any, _props: Any = None) -> None:
        delay = self.resubscriber.on_suback(codes)
        if delay is None:
            log.error(
                "broker %s refused the subscriptions %d times",
                self.failover.current,
                self.resubscriber.attempt,
            )
        elif delay:
            log.warning("broker %s refused a subscription; again in %.1f s", self.failover.current, delay)

    def _disconnected_cb(self, c: mqtt.Client, _ud: Any, _flags: Any, rc: Any, _props: Any = None) -> None:
        if self._connected.is_set():
            self._down_since = time.monotonic()
        self._connected.clear()
        self.resubscriber.cancel()
        if self.connects > 0:
            self.failover.advance(c)
        if self.connects == 0:
            # Closed before the first CONNACK: with TLS the broker rejected our certificate (TLS 1.3
            # reports that only on the first read, as "Unspecified error"); retrying cannot help.
            self._failed = self._failed or self.last_error or str(rc)
            self._settled.set()
        elif rc != 0:
            log.warning("disconnected from broker (%s); reconnecting", rc)

    def _log_cb(self, _c: mqtt.Client, _ud: Any, level: int, buf: str) -> None:
        # Socket and TLS errors (paho reports them nowhere else); not its between-reconnects noise.
        if level == mqtt.MQTT_LOG_ERR and not buf.startswith("Client is not connected"):
            self.last_error = buf
            log.warning("mqtt: %s", buf)

    def _message_cb(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic  # paho decodes the topic here: a broker may pass on invalid UTF-8
        except UnicodeDecodeError:
            log.warning("dropped a message whose topic is not UTF-8: %r", bytes(msg._topic)[:120])
            self.ack(self._receipt(msg))  # nothing will ever take it: redelivering cannot help
            return
        try:
            if self._on_delivery is not None:
                self._on_delivery(topic, msg.payload, self._receipt(msg))
            else:
                assert self._on_message is not None
                self._on_message(topic, msg.payload)
        except Exception:  # a bad message must never kill paho's network thread
            log.exception("error handling message on %s", msg.topic)
            self.ack(self._receipt(msg))  # redelivered, it would fail the same way again

    def _receipt(self, msg: mqtt.MQTTMessage) -> Receipt:
        return Receipt(msg.mid, msg.qos, self._connection)

    def current(self, receipt: Receipt) -> bool:
        """Whether `receipt` can still be acknowledged: its connection is the one up now. After a
        reconnect the broker redelivers what was not acknowledged, under packet ids that may now
        name other messages."""
        return receipt.connection == self._connection and self._connected.is_set()

    def ack(self, receipt: Receipt) -> bool:
        """PUBACK one message taken with `on_delivery` (a no-op with `on_message`, or for QoS 0).
        False when its connection is gone: the broker redelivers it instead."""
        if self._on_delivery is None or receipt.qos == 0:
            return True
        if not self.current(receipt):
            return False
        return self.client.ack(receipt.mid, receipt.qos) == mqtt.MQTT_ERR_SUCCESS

    def connect(self, timeout: float = 10.0) -> None:
        errors = []
        for _ in self.failover.eps:  # the first node that answers; paho's thread moves on later
            ep = self.failover.current
            try:
                self.client.connect(ep.host, ep.port, keepalive=30)
                break
            except OSError as e:
                errors.append(f"{ep}: {e}")
                self.failover.advance(self.client)
        else:
            raise FleetError(
                f"cannot reach the MQTT broker at {'; '.join(errors)}", hint="check [broker] in fleet.toml"
            )
        host, port = self.failover.current.host, self.failover.current.port
        self.client.loop_start()
        self._settled.wait(timeout)
        if not self._connected.is_set():
            self.client.loop_stop()
            why = f": {self._failed}" if self._failed else ""
            hint = "check [broker] tls, ca, cert and key in fleet.toml" if self.cfg.get("tls") else None
            raise FleetError(f"MQTT broker at {host}:{port} did not accept the connection{why}", hint=hint)

    def is_connected(self) -> bool:
        return self._connected.is_set()

    def down_for(self) -> float:
        """Seconds since the connection dropped, 0.0 while up (or before the first connect)."""
        since = self._down_since
        return 0.0 if since is None else time.monotonic() - since

    def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def close(self) -> None:
        self.resubscriber.cancel()
        self.client.disconnect()
        self.client.loop_stop()
