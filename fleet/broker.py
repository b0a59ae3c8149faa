"""The embedded MQTT broker (amqtt, MQTT 3.1.1) run in its own thread and event loop.

The zero-setup default for demos and single-box use. Production fleets use Mosquitto or a
clustered broker (docs/fleet.md). Authentication and per-device ACLs come from
fleet.broker_acl (amqtt's built-in ACL only knows static per-user lists).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from fleet.errors import FleetError

log = logging.getLogger(__name__)


def broker_config(
    host: str, port: int, fleet: str, users: dict[str, str], allow_anonymous: bool, server_user: str
) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "plugins": {
            "fleet.broker_acl.DeviceAuthPlugin": {"users": users, "allow_anonymous": allow_anonymous},
            "fleet.broker_acl.DeviceTopicPlugin": {
                "fleet": fleet,
                "server_user": server_user,
                "enforce": not allow_anonymous,
            },
        },
    }


class EmbeddedBroker:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        fleet: str = "default",
        users: dict[str, str] | None = None,
        allow_anonymous: bool = True,
        server_user: str = "",
    ):
        self.config = broker_config(host, port, fleet, users or {}, allow_anonymous, server_user)
        self.host, self.port = host, port
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
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error:
            raise FleetError(
                f"embedded MQTT broker failed to start on {self.host}:{self.port}: {self._error}"
            )
        log.info("embedded MQTT broker on %s:%s", self.host, self.port)

    def _run(self) -> None:
        from amqtt.broker import Broker

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            self._broker = Broker(self.config, loop=loop)
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
        if not self._loop or not self._broker:
            return
        fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            fut.result(timeout=10)
        except Exception as e:  # shutting down: log, do not mask the caller's exit
            log.debug("broker shutdown: %s", e)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(timeout=10)
