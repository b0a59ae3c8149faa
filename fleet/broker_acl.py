"""amqtt plugins: username/password auth and the per-device topic ACL of docs/fleet.md.

A device's username is its device id. It may subscribe to its own `desired` and the fleet's
`roots`, and publish only on its own `status` and `online`. The server user may do anything.
Note: MQTT 3.1.1 has no way to tell a client its publish was refused; the broker drops it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin


class DeviceAuthPlugin(BaseAuthPlugin):
    @dataclass
    class Config:
        users: dict[str, str] = field(default_factory=dict)
        allow_anonymous: bool = True

    async def authenticate(self, *, session: Any) -> bool | None:
        cfg = self.context.config
        if cfg.allow_anonymous:
            return True
        user, password = session.username, session.password
        expected = cfg.users.get(user or "")
        if expected is None or password is None:
            return False
        return hmac.compare_digest(str(expected), str(password))


def _matches(topic: str, pattern: str) -> bool:
    t, p = topic.split("/"), pattern.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(t) == len(p)


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
        user = getattr(session, "username", None) or ""
        if not topic:
            return False
        if cfg.server_user and user == cfg.server_user:
            return True
        base = f"edgekit/{cfg.fleet}"
        if action == Action.PUBLISH:
            allowed = [f"{base}/devices/{user}/status", f"{base}/devices/{user}/online"]
        else:  # SUBSCRIBE / RECEIVE
            allowed = [f"{base}/devices/{user}/desired", f"{base}/roots"]
        return any(_matches(topic, a) for a in allowed)
