"""`[agent] enrolment = "DIR"`: take the device's identity, root of trust and broker access from
the bundle `edgekit fleet devices enroll` wrote (edgekit.enrolment).

The bundle fills every key the configuration leaves at its default: agent.device, agent.fleet,
agent.root and [mqtt] host, port, tls, ca, username, password_file (and protocol when the bundle
names one). A key set in agent.toml or the environment wins, except the identity: a device or
fleet that differs from the bundle's is a configuration error (its credentials would be refused).
"""

from __future__ import annotations

from typing import Any

from edgekit.enrolment import read_bundle
from edgekit.errors import ConfigError


def apply_enrolment(cfg: dict[str, Any], defaults: dict[str, Any]) -> None:
    bundle = read_bundle(cfg["agent"]["enrolment"])
    e = bundle.enrolment
    a = cfg["agent"]
    for key, value in (("device", e.device), ("fleet", e.fleet)):
        if a[key] not in (defaults["agent"][key], value):
            raise ConfigError(
                f"agent.{key} is {a[key]!r} but the enrolment bundle {bundle.dir} is for {value!r}",
                hint=f"remove agent.{key} from the configuration, or use that device's bundle",
            )
        a[key] = value
    host, port, tls = e.broker.address()
    fills: dict[tuple[str, str], Any] = {
        ("agent", "root"): str(bundle.root),
        ("mqtt", "host"): host,
        ("mqtt", "port"): port,
        ("mqtt", "tls"): tls,
        ("mqtt", "ca"): str(bundle.ca) if bundle.ca else "",
        ("mqtt", "username"): e.broker.username,
        ("mqtt", "password_file"): str(bundle.password_file),
    }
    if e.broker.protocol:
        fills[("mqtt", "protocol")] = e.broker.protocol
    if e.broker.desired_qos is not None:
        fills[("mqtt", "desired_qos")] = e.broker.desired_qos
    if cfg["mqtt"]["password"]:  # a password given inline wins over the bundle's file
        del fills[("mqtt", "password_file")]
    for (section, key), value in fills.items():
        if cfg[section][key] == defaults[section][key]:
            cfg[section][key] = value
