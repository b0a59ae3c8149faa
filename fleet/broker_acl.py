"""amqtt plugins: who may connect (fleet.broker.Identities) and the per-device topic rules
(fleet.acl, the same table the Mosquitto ACL is rendered from).

Note: MQTT 3.1.1 has no way to tell a client its publish was refused; the broker drops it. A
refused subscription gets SUBACK 0x80.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from fleet.acl import Access, allowed


class DeviceAuthPlugin(BaseAuthPlugin):
    @dataclass
    class Config:
        identities: Any = None  # fleet.broker.Identities

    async def authenticate(self, *, session: Any) -> bool | None:
        # The broker already refused bad credentials at CONNECT (fleet.broker); checking again
        # here keeps amqtt's own authentication step from ever letting a session through.
        return bool(self.context.config.identities.check(session.username, session.password))


class DeviceTopicPlugin(BaseTopicPlugin):
    @dataclass
    class Config:
        fleet: str = "default"
        server_user: str = ""
        enforce: bool = True

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        cfg = self.context.config
        if not cfg.enforce:
            return True
        access = Access.WRITE if action == Action.PUBLISH else Access.READ
        return allowed(cfg.fleet, getattr(session, "username", None), cfg.server_user, topic, access)
