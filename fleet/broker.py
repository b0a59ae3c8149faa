"""The embedded MQTT broker (amqtt, MQTT 3.1.1) run in its own thread and event loop.

The zero-setup default for demos and single-box use. Production fleets use Mosquitto or a
clustered broker (docs/fleet.md). Secure by default:
- no anonymous clients: a device logs in with the credentials of its enrolment bundle
  (`edgekit fleet devices enroll`, fleet.credentials), the fleet server with its own user;
- the per-device topic rules of fleet.acl (the same table as the Mosquitto ACL);
- the client id is the username (Mosquitto's `use_username_as_clientid`), so nobody can take
  over another device's session, disconnect it or fire its Last Will; a client's own Last Will
  must be on a topic it may publish to.
`allow_anonymous = true` turns all three off (an explicit, logged opt-in for closed test rigs).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet import config as fleet_config
from fleet.acl import Access, allowed
from fleet.credentials import CredentialStore, new_password, open_store
from fleet.errors import FleetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identities:
    """Who may connect: the fleet server's own user and every enrolled device."""

    fleet: str
    credentials: CredentialStore | None
    server_user: str
    server_password: str
    allow_anonymous: bool = False

    def may_publish(self, username: str | None, topic: str | None) -> bool:
        return self.allow_anonymous or allowed(self.fleet, username, self.server_user, topic, Access.WRITE)

    def check(self, username: str | None, password: str | bytes | None) -> bool:
        if self.allow_anonymous:
            return True
        if not username or password is None:
            return False
        if username == self.server_user:  # never a device, even if one was enrolled by that name
            pw = password.encode() if isinstance(password, str) else password
            return bool(self.server_password) and hmac.compare_digest(pw, self.server_password.encode())
        return self.credentials is not None and self.credentials.verify(username, password)


def broker_config(host: str, port: int, identities: Identities) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "plugins": {
            "fleet.broker_acl.DeviceAuthPlugin": {"identities": identities},
            "fleet.broker_acl.DeviceTopicPlugin": {
                "fleet": identities.fleet,
                "server_user": identities.server_user,
                "enforce": not identities.allow_anonymous,
            },
        },
    }


def _bound_broker_class() -> type:
    """amqtt's Broker, authenticating at CONNECT and binding the client id to the username.

    amqtt 0.12.1 looks up the session of the CONNECT's client id (and with clean_session deletes
    it) before it authenticates, and the take-over of a connected session follows even when the
    authentication then fails: anyone who knows a device id could drop that device and fire its
    Last Will. So this reads the CONNECT, refuses bad credentials there, before any session is
    touched, and makes the username the client id; the rest is amqtt's own session lookup
    (pinned: edgekit[broker] requires amqtt==0.12.1)."""
    from amqtt.broker import Broker
    from amqtt.errors import AMQTTError, MQTTError, NoDataError
    from amqtt.mqtt.connack import BAD_USERNAME_PASSWORD, NOT_AUTHORIZED, ConnackPacket
    from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
    from amqtt.utils import gen_client_id

    class BoundBroker(Broker):
        def __init__(self, config: dict[str, Any], identities: Identities, **kw: Any):
            super().__init__(config, **kw)
            self.identities = identities

        async def _initialize_client_session(
            self, reader: Any, writer: Any, remote_address: str, remote_port: int
        ) -> tuple[Any, Any]:
            if self.identities.allow_anonymous:
                return await super()._initialize_client_session(reader, writer, remote_address, remote_port)
            try:
                handler, session = await BrokerProtocolHandler.init_from_connect(
                    reader, writer, self.plugins_manager
                )
            except MQTTError:
                await writer.close()
                raise
            except NoDataError as e:
                raise AMQTTError(e) from e
            if not self.identities.check(session.username, session.password):
                code = BAD_USERNAME_PASSWORD if session.username else NOT_AUTHORIZED
                await ConnackPacket.build(0, code).to_stream(writer)
                await writer.close()
                log.info(
                    "refused MQTT client from %s:%s: %s",
                    remote_address,
                    remote_port,
                    "wrong username or password" if session.username else "no credentials",
                )
                raise MQTTError(f"refused {remote_address}:{remote_port}: not authenticated")
            if session.will_flag and not self.identities.may_publish(session.username, session.will_topic):
                # amqtt publishes a Last Will without the publish ACL: a device could mark
                # another one offline by dropping its connection.
                await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
                await writer.close()
                log.info("refused MQTT client %r: Last Will on %r", session.username, session.will_topic)
                raise MQTTError(f"refused {session.username!r}: Last Will on a topic it may not write")
            session.client_id = session.username  # bound: one session per user, no take-over

            # amqtt's session lookup from here on, unchanged.
            if session.clean_session:
                if session.client_id:
                    await self._delete_session(session.client_id)
                else:
                    session.client_id = gen_client_id()
                session.parent = 0
            elif session.client_id in self._sessions:
                existing, _ = self._sessions[session.client_id]
                for attr in (
                    "will_flag",
                    "will_message",
                    "will_topic",
                    "will_qos",
                    "keep_alive",
                    "username",
                    "password",
                ):
                    setattr(existing, attr, getattr(session, attr))
                session = existing
                session.parent = 1
            else:
                session.parent = 0
            delay = self.config.get("timeout-disconnect-delay", 0)
            if session.keep_alive > 0 and isinstance(delay, int):
                session.keep_alive += delay
            return handler, session

    return BoundBroker


class EmbeddedBroker:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        fleet: str = "default",
        *,
        credentials: CredentialStore | None = None,
        server_user: str = fleet_config.SERVER_USER,
        server_password: str = "",
        allow_anonymous: bool = False,
        close_credentials: bool = False,
    ):
        self.identities = Identities(fleet, credentials, server_user, server_password, allow_anonymous)
        self.config = broker_config(host, port, self.identities)
        self.host, self.port = host, port
        self._close_credentials = close_credentials
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        try:
            import amqtt  # noqa: F401
        except ImportError as e:
            raise FleetError("the embedded broker needs amqtt", hint="pip install 'edgekit[broker]'") from e
        if self.identities.allow_anonymous:
            log.warning(
                "embedded MQTT broker allows anonymous clients (allow_anonymous = true): any client "
                "can publish as any device and read every manifest"
            )
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error:
            raise FleetError(
                f"embedded MQTT broker failed to start on {self.host}:{self.port}: {self._error}"
            )
        log.info("embedded MQTT broker on %s:%s", self.host, self.port)

    def _run(self) -> None:
        broker_class = _bound_broker_class()
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            self._broker = broker_class(self.config, self.identities, loop=loop)
            await self._broker.start()

        try:
            loop.run_until_complete(boot())
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()

    def stop(self) -> None:
        if self._loop and self._broker:
            fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                fut.result(timeout=10)
            except Exception as e:  # shutting down: log, do not mask the caller's exit
                log.debug("broker shutdown: %s", e)
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread:
                self._thread.join(timeout=10)
        if self._close_credentials and self.identities.credentials is not None:
            self.identities.credentials.close()


def start_embedded(cfg: dict[str, Any], state_dir: Path) -> tuple[EmbeddedBroker, dict[str, Any]]:
    """Start the embedded broker for a fleet server. Returns it and the `[broker]` settings for
    the server's own MQTT link, with the server's credentials filled in: without a configured
    password the server gets a new random one at every start, kept in memory only (it is the
    broker's only client that needs it)."""
    b = dict(cfg["broker"])
    if cfg.get("broker_users"):
        log.warning(
            "[broker_users] is no longer read (plain-text passwords): enrol each device with "
            "`edgekit fleet devices enroll DEVICE_ID`"
        )
    b["username"] = fleet_config.server_user(cfg)
    b["password"] = b["password"] or new_password()
    broker = EmbeddedBroker(
        b["host"],
        int(b["port"]),
        cfg["server"]["fleet"],
        credentials=open_store(state_dir),
        server_user=b["username"],
        server_password=b["password"],
        allow_anonymous=bool(b["allow_anonymous"]),
        close_credentials=True,
    )
    broker.start()
    return broker, b
