"""Several broker URLs for one MQTT client, and what to do when the broker says no.

A clustered broker (NATS, EMQX, ...) is reached through any of its nodes: the fleet server and the
agents take a list of `mqtt(s)://host:port` URLs and, when the connection drops or a connect
fails, try the next one. paho reconnects on its own thread; `Failover.advance` only points its
next reconnect at the next URL.

nats-server 2.9 answers a QoS 1 SUBSCRIBE with 0x80 for a few seconds while JetStream elects a
leader (measured: after killing a node): `suback_retry_delay` is the bounded backoff for
subscribing again. The connection itself stays up, so nothing else would ever retry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edgekit.enrolment import broker_address

log = logging.getLogger(__name__)

SUBACK_FAILURE = 0x80
SUBSCRIBE_RETRY_FIRST_S = 0.5
SUBSCRIBE_RETRY_MAX_S = 8.0
SUBSCRIBE_RETRIES = 12  # 0.5+1+2+4+8*8: about 70 s, longer than any election measured


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def endpoints(urls: Sequence[str], host: str, port: int, tls: bool = False) -> list[Endpoint]:
    """The brokers to try in order: `urls` if any (ValueError naming a bad one), else host:port."""
    if not urls:
        return [Endpoint(host, int(port), tls)]
    return [Endpoint(*broker_address(u)) for u in check_urls(urls)]


def check_urls(urls: list[str]) -> list[str]:
    """A config validator: every URL parses, and all use TLS or none (one paho client has one
    TLS context), or a ValueError naming the problem."""
    schemes = {broker_address(u)[2] for u in urls}
    if len(schemes) > 1:
        raise ValueError("broker URLs mix mqtt:// and mqtts://: use one scheme for all nodes")
    return urls


def suback_retry_delay(attempt: int) -> float | None:
    """Seconds to wait before re-subscribing after the `attempt`-th refusal (1-based); None: give up."""
    if attempt < 1 or attempt > SUBSCRIBE_RETRIES:
        return None
    return min(SUBSCRIBE_RETRY_FIRST_S * 2 ** (attempt - 1), SUBSCRIBE_RETRY_MAX_S)


def refused(reason_codes: Sequence[Any]) -> bool:
    """A SUBACK with any filter refused (paho 2.x hands ReasonCode objects, or ints)."""
    return any(int(getattr(rc, "value", rc)) >= SUBACK_FAILURE for rc in reason_codes)


class Failover:
    """Round-robin over `endpoints` for one paho client: the current one is `current`."""

    def __init__(self, eps: Sequence[Endpoint]):
        if not eps:
            raise ValueError("no broker endpoint")
        self.eps = list(eps)
        self.index = 0
        self.switches = 0

    @property
    def current(self) -> Endpoint:
        return self.eps[self.index]

    def advance(self, client: Any) -> Endpoint:
        """Point `client`'s next (re)connect at the next endpoint. A single endpoint is a no-op."""
        if len(self.eps) > 1:
            self.index = (self.index + 1) % len(self.eps)
            self.switches += 1
            # paho's public host/port setters refuse while its state still says "connected",
            # which it does inside on_disconnect; reconnect() reads these two fields.
            client._host, client._port = self.current.host, self.current.port
            log.info("MQTT: next broker %s", self.current)
        return self.current


class Resubscriber:
    """SUBACK refusals (NATS refuses QoS 1 subscriptions during a JetStream election) counted and
    answered by subscribing again with backoff (suback_retry_delay), one timer at a time. The
    agent's and the fleet's MQTT links share it; each logs in its own words."""

    def __init__(self, resubscribe: Callable[[], None]):
        self._resubscribe = resubscribe
        self.refusals = 0  # SUBACK 0x80 answers seen, in all
        self.attempt = 0  # consecutive refusals since the last accepted SUBACK or connect
        self._timer: threading.Timer | None = None

    def reset(self) -> None:
        self.attempt = 0

    def on_suback(self, reason_codes: Sequence[Any]) -> float | None:
        """0 when accepted; else the delay before subscribing again, or None: gave up."""
        if not refused(reason_codes):
            self.attempt = 0
            return 0.0
        self.refusals += 1
        self.attempt += 1
        delay = suback_retry_delay(self.attempt)
        if delay is not None:
            self.cancel()
            self._timer = threading.Timer(delay, self._resubscribe)
            self._timer.daemon = True
            self._timer.start()
        return delay

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
