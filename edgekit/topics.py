"""The MQTT topic layout shared by the agent, the fleet server and the broker ACLs.

    edgekit/{fleet}/devices/{device}/desired   retained, QoS 1, server -> device: signed manifest
    edgekit/{fleet}/devices/{device}/status    QoS 1, device -> server: state changes, heartbeat
    edgekit/{fleet}/devices/{device}/online    retained, QoS 1, device -> server; Last Will = offline
    edgekit/{fleet}/roots                      retained, QoS 1, server -> all: JSON list of root.json

Device ids and fleet names must be valid single topic levels (no '/', '+', '#').
With Mosquitto the device's MQTT username is its device id, so one ACL pattern covers all:
`pattern read edgekit/<fleet>/devices/%u/desired`, `pattern write edgekit/<fleet>/devices/%u/status` ...
"""

from __future__ import annotations

import re

PREFIX = "edgekit"
DESIRED, STATUS, ONLINE = "desired", "status", "online"
_LEVEL = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


def valid_name(value: object) -> bool:
    # fullmatch, not match with "$": "$" also matches before a trailing newline ("dev-1\n").
    return isinstance(value, str) and _LEVEL.fullmatch(value) is not None


def check_name(kind: str, value: str) -> str:
    """Refuse names that would break the topic tree (and the ACL patterns that rely on it)."""
    if not valid_name(value):
        shown = repr(value)[:60] if isinstance(value, str) else type(value).__name__
        raise ValueError(f"invalid {kind} {shown}: use letters, digits and . _ : @ - (max 128)")
    return value


def device_topic(fleet: str, device: str, kind: str) -> str:
    return f"{PREFIX}/{check_name('fleet', fleet)}/devices/{check_name('device id', device)}/{kind}"


def desired(fleet: str, device: str) -> str:
    return device_topic(fleet, device, DESIRED)


def status(fleet: str, device: str) -> str:
    return device_topic(fleet, device, STATUS)


def online(fleet: str, device: str) -> str:
    return device_topic(fleet, device, ONLINE)


def roots(fleet: str) -> str:
    return f"{PREFIX}/{check_name('fleet', fleet)}/roots"


def all_devices(fleet: str, kind: str = "+") -> str:
    """Subscription filter for the server, e.g. every device's status."""
    return f"{PREFIX}/{check_name('fleet', fleet)}/devices/+/{kind}"


def parse(topic: str) -> tuple[str, str, str] | None:
    """topic -> (fleet, device, kind), or None when it is not a device topic."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[0] == PREFIX and parts[2] == "devices":
        return parts[1], parts[3], parts[4]
    return None
