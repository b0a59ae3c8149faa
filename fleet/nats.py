"""nats-server configuration for a clustered broker: one file per node (MQTT listener, JetStream,
cluster routes) and one `accounts.conf` they all include, holding the fleet's users with the
fleet.acl rules rendered as NATS subject permissions. Written for nats-server 2.9 (Debian's).

What nats-server 2.9 does, read from its source (server/mqtt.go, client.go) and checked by
tests/fleet/test_nats.py:

- Topics become subjects level by level: `/` -> `.`, `+` -> `*`, `#` -> `>`; an empty level is
  the token `/`. A `.` or a space in a topic is refused, so a fleet or device id with a `.` (valid
  for Mosquitto) cannot use NATS: rendering such a user is a clear error, not a silent mismatch.
- A QoS 1 subscription is a JetStream consumer delivering to `$MQTT.sub.<nuid>` on behalf of the
  user, so every MQTT user needs subscribe rights on `$MQTT.sub.>`. An MQTT client cannot
  subscribe to `$MQTT/sub/...` itself (refused), and `allowed_connection_types: ["MQTT"]` keeps a
  device's password from opening a plain NATS connection, where it could.
- A publish outside the allow-list is dropped (a QoS 1 publish is still PUBACKed, retained or
  not it is neither delivered nor stored); a refused subscription gets SUBACK 0x80. The
  connection stays up.
- The client id cannot be bound to the username (2.9 has no `use_username_as_clientid`). A
  device sending another device's client id takes over that session anywhere in the cluster:
  the other is disconnected (its Last Will fires), but the session's subscriptions are re-made
  under the newcomer's permissions, so it receives nothing of the other's. Agents use client id
  = username; a device that borrows another's id can disconnect it, not read or write as it.
- Scale (measured, bench/fleet.py and a subscribe-rate probe, 3 nodes on one 2-core box): every
  QoS 1 subscription is a durable JetStream consumer, and in a cluster every consumer is created
  through the JetStream meta leader (a Raft proposal, plus a Raft group of its own at R3). 2,000
  devices subscribing `desired` at QoS 1 got 324 SUBACKs in 40 s and then only refusals (consumer
  create "timeout for request type CC", 4 s read loops); with `consumer_replicas: 1` 2,000 made
  it in 8 s but 5,000 collapsed the same way (the meta proposal remains). At QoS 0 there is no
  consumer: 2,000 in 6 s and 5,000 in 27 s, no refusal. So devices subscribe `desired` at QoS 0
  on NATS. Nothing is lost by it: `desired` is retained (in the R3 retained-message stream) and
  re-sent on every SUBSCRIBE, and a device subscribes on every connect, so a manifest missed
  while a connection broke comes back with the reconnect, as the unacknowledged QoS 1 copy would
  have. The fleet server keeps QoS 1 and a persistent session (two R3 consumers): status reports
  are the messages only it holds.
- Passwords are bcrypt (`$2a$`/`$2b$`); nats-server cannot read Mosquitto's `$7$` hashes that
  fleet.credentials stores. Cost 4, the minimum: the passwords are 256-bit random tokens, so the
  hash only has to be one-way, and nats-server checks it on every CONNECT.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit import topics
from fleet.acl import Access, device_topics, server_filter
from fleet.errors import FleetError

ACCOUNT = "EDGEKIT"
CLUSTER = "edgekit"
ACCOUNTS_FILE = "accounts.conf"
MQTT_DELIVERY = "$MQTT.sub.>"  # where JetStream hands QoS 1 messages to MQTT subscriptions
BCRYPT_COST = 4


@dataclass(frozen=True)
class Node:
    """One nats-server of the cluster; `host` is where the others and the clients reach it."""

    name: str
    host: str = "127.0.0.1"
    port: int = 4222  # NATS protocol (clients, and the fleet server should it speak NATS)
    mqtt_port: int = 1883
    cluster_port: int = 6222
    http_port: int = 8222  # monitoring (/routez, /jsz); 0: off


@dataclass(frozen=True)
class User:
    name: str
    password: str  # a bcrypt hash
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def topic_subjects(topic_filter: str) -> tuple[str, ...]:
    """The NATS subjects an MQTT topic or filter means, as nats-server 2.9 converts it.

    `a/#` also matches `a` in MQTT but `a.>` does not match `a` in NATS, so it is two subjects."""
    if "." in topic_filter or " " in topic_filter:
        raise ValueError(f"{topic_filter!r}: nats-server 2.9 refuses '.' and ' ' in MQTT topics")
    levels = topic_filter.split("/")
    subject = ".".join({"+": "*", "#": ">", "": "/"}.get(level, level) for level in levels)
    if len(levels) > 1 and levels[-1] == "#":
        return (subject, subject[: -len(".>")])
    return (subject,)


def _subjects(filters: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({s for f in filters for s in topic_subjects(f)}))


def check_name(kind: str, value: str) -> str:
    """A fleet name or device id NATS can carry (enrolment should call it when the broker is NATS)."""
    topics.check_name(kind, value)
    if "." in value:
        raise FleetError(
            f"{kind} {value!r} contains '.': nats-server 2.9 cannot carry it in an MQTT topic",
            hint="use Mosquitto or the embedded broker for this fleet, or ids without '.'",
        )
    return value


def device_user(fleet: str, device: str, password_hash: str) -> User:
    """A device: exactly fleet.acl's rules for it (the Mosquitto `%u` patterns, expanded)."""
    check_name("fleet", fleet)
    check_name("device id", device)
    return User(
        device,
        password_hash,
        publish=_subjects(device_topics(fleet, device, Access.WRITE)),
        subscribe=(*_subjects(device_topics(fleet, device, Access.READ)), MQTT_DELIVERY),
    )


def server_user(fleet: str, name: str, password_hash: str) -> User:
    """The fleet server: read and write the whole fleet, as in the Mosquitto ACL."""
    grant = _subjects([server_filter(check_name("fleet", fleet))])
    return User(name, password_hash, publish=grant, subscribe=(*grant, MQTT_DELIVERY))


def hash_password(password: str) -> str:
    try:
        import bcrypt
    except ImportError:
        raise FleetError(
            "NATS password hashes need the bcrypt package", hint="pip install 'edgekit[scale]'"
        ) from None
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()


def _q(value: str) -> str:
    # A quoted string is literal in the NATS config format: no `$variable` expansion.
    return json.dumps(value)


def _list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def accounts_text(users: Iterable[User], account: str = ACCOUNT) -> str:
    """The `accounts` block every node includes: JetStream on (MQTT keeps sessions, QoS 1
    messages and retained messages in it) and one entry per user."""
    lines = ["accounts {", f"  {account}: {{", "    jetstream: enabled", "    users: ["]
    for u in sorted(users, key=lambda u: u.name):
        lines.append(
            f"      {{user: {_q(u.name)}, password: {_q(u.password)}, "
            f'allowed_connection_types: ["MQTT"], '
            f"permissions: {{publish: {{allow: {_list(u.publish)}}}, "
            f"subscribe: {{allow: {_list(u.subscribe)}}}}}}}"
        )
    lines += ["    ]", "  }", "}"]
    return "\n".join(lines) + "\n"


def node_text(
    nodes: Sequence[Node],
    index: int,
    store_dir: Path,
    *,
    cluster: str = CLUSTER,
    accounts_file: str = ACCOUNTS_FILE,
    listen_host: str | None = None,
) -> str:
    """The config of `nodes[index]`: routes to every other node, JetStream in `store_dir`, and
    MQTT streams replicated on min(3, N) nodes so retained messages survive losing a node.
    `listen_host` (default: the node's host) is the address to bind, e.g. 0.0.0.0."""
    me = nodes[index]
    bind = listen_host or me.host
    replicas = min(3, len(nodes))
    routes = [f"nats-route://{n.host}:{n.cluster_port}" for i, n in enumerate(nodes) if i != index]
    lines = [
        f"server_name: {_q(me.name)}",
        f"listen: {_q(f'{bind}:{me.port}')}",
        *([f"http: {_q(f'{bind}:{me.http_port}')}"] if me.http_port else []),
        f"jetstream {{ store_dir: {_q(str(store_dir))} }}",
        f"mqtt {{ listen: {_q(f'{bind}:{me.mqtt_port}')}, stream_replicas: {replicas} }}",
        f"cluster {{ name: {_q(cluster)}, listen: {_q(f'{bind}:{me.cluster_port}')}, routes: {_list(routes)} }}",
        f"include {_q(accounts_file)}",
    ]
    return "\n".join(lines) + "\n"


def users_for(
    fleet: str, server_name: str, server_hash: str, devices: Iterable[tuple[str, str]]
) -> list[User]:
    """The server's user and one per (device id, bcrypt hash) from the registry."""
    return [server_user(fleet, server_name, server_hash)] + [device_user(fleet, d, h) for d, h in devices]


def write_cluster(
    out: Path,
    nodes: Sequence[Node],
    users: Iterable[User],
    store_root: Path,
    **node_options: Any,
) -> dict[str, Any]:
    """Write `node-<name>.conf` for every node and the shared `accounts.conf` (0600: hashes)
    into `out`. After an enrolment rewrite `accounts.conf` on each node and reload them all
    (`nats-server --signal reload=<pid>`, or SIGHUP)."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if len({n.name for n in nodes}) != len(nodes):
        raise FleetError("NATS node names must be unique (JetStream tells servers apart by name)")
    files = {out / ACCOUNTS_FILE: accounts_text(users)}
    for i, n in enumerate(nodes):
        files[out / f"node-{n.name}.conf"] = node_text(nodes, i, Path(store_root) / n.name, **node_options)
    for path, text in files.items():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    return {"dir": str(out), "files": sorted(p.name for p in files)}


def cluster_nodes(count: int, hosts: Sequence[str] = ()) -> list[Node]:
    """`count` nodes named nats-1.. on `hosts` (one each, standard ports), or all on 127.0.0.1
    with ports shifted by the node's index so a test box or laptop can run them side by side."""
    if count < 1:
        raise FleetError("--nodes must be at least 1")
    if hosts and len(hosts) != count:
        raise FleetError(f"{len(hosts)} host(s) for {count} node(s): give one host per node")
    if hosts:
        return [Node(f"nats-{i + 1}", h) for i, h in enumerate(hosts)]
    return [Node(f"nats-{i + 1}", "127.0.0.1", 4222 + i, 1883 + i, 6222 + i, 8222 + i) for i in range(count)]


def fleet_users(cfg: dict[str, Any]) -> tuple[list[User], list[str]]:
    """The NATS users of a fleet from its fleet.toml and credential store, and the devices left
    out because their credentials predate NATS support (no bcrypt hash: enrol them again)."""
    from fleet import config as fleet_config
    from fleet.credentials import broker_inputs

    password, creds = broker_inputs(cfg, "the NATS nodes need")
    skipped = [c.device for c in creds if not c.nats_hash]
    users = users_for(
        cfg["server"]["fleet"],
        fleet_config.server_user(cfg),
        hash_password(password),
        ((c.device, c.nats_hash) for c in creds if c.nats_hash),
    )
    return users, skipped


def write_fleet_config(
    cfg: dict[str, Any], out: Path, nodes: Sequence[Node], store_root: Path, listen_host: str | None = None
) -> dict[str, Any]:
    """`edgekit fleet nats-config`: every node's config and accounts.conf for the enrolled devices."""
    users, skipped = fleet_users(cfg)
    info = write_cluster(out, nodes, users, store_root, listen_host=listen_host)
    return {**info, "nodes": [n.name for n in nodes], "devices": len(users) - 1, "skipped": skipped}


def rewrite_accounts(cfg: dict[str, Any]) -> Path | None:
    """After an enrolment or a revocation: rewrite `<[broker] nats_dir>/accounts.conf` (0600) if
    the fleet runs on NATS and says where; the nodes read it on their next reload (SIGHUP)."""
    b = cfg["broker"]
    if b.get("kind") != "nats" or not b.get("nats_dir"):
        return None
    users, _skipped = fleet_users(cfg)
    path = Path(b["nats_dir"]).expanduser() / ACCOUNTS_FILE
    tmp = path.with_name(f".{ACCOUNTS_FILE}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(accounts_text(users))
    os.replace(tmp, path)  # a node reloading now reads the old file or the new one, never half
    return path
