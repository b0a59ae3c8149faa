"""Who may do what on which topic: one table, enforced by the embedded broker (fleet.broker_acl),
rendered as the Mosquitto ACL file (fleet.mosquitto) and as NATS subject permissions (fleet.nats),
so every broker applies the same rules.

A device's MQTT username is its device id. It may read its own `desired` and the fleet's
retained `roots`, and write only its own `status` (state changes and heartbeats) and `online`
(its Last Will). It never writes `desired` or `roots`, and never reads another device's topics
or a wildcard. The fleet server's own user may read and write everything under the fleet.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache

from edgekit import topics


class Access(StrEnum):
    READ = "read"  # subscribe to, and be delivered
    WRITE = "write"  # publish


DEVICE = "%u"  # Mosquitto's placeholder for the username, used as-is in the ACL file
DEVICE_RULES: tuple[tuple[Access, str], ...] = (
    (Access.READ, f"devices/{DEVICE}/{topics.DESIRED}"),
    (Access.READ, "roots"),
    (Access.WRITE, f"devices/{DEVICE}/{topics.STATUS}"),
    (Access.WRITE, f"devices/{DEVICE}/{topics.ONLINE}"),
)


def server_filter(fleet: str) -> str:
    """The server user's grant, read and write: the whole fleet (an MQTT filter; `#` also matches
    the fleet's own level, as `allowed` below does)."""
    return f"{topics.PREFIX}/{fleet}/#"


@lru_cache(maxsize=4096)  # called for every delivery; the answer only depends on its arguments
def device_topics(fleet: str, device: str, access: Access) -> frozenset[str]:
    base = f"{topics.PREFIX}/{fleet}"
    return frozenset(f"{base}/{p.replace(DEVICE, device)}" for a, p in DEVICE_RULES if a == access)


def allowed(fleet: str, username: str | None, server_user: str, topic: str | None, access: Access) -> bool:
    """The decision for one publish (WRITE) or one subscription / delivery (READ).

    Only exact topics are granted to devices: a filter with `+` or `#` never equals one, so a
    device cannot subscribe to `#` or to every device's `desired`."""
    if not username or not topic:
        return False
    if server_user and username == server_user:
        return topic == f"{topics.PREFIX}/{fleet}" or topic.startswith(f"{topics.PREFIX}/{fleet}/")
    try:
        topics.check_name("device id", username)  # a name with '/', '+' or '#' is nobody's
    except ValueError:
        return False
    return topic in device_topics(fleet, username, access)
