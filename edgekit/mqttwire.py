"""MQTT 3.1.1 framing as pure functions, for the places that speak the wire format directly:
the bench's light simulated devices (bench/simulator.py: thousands per event loop, where paho
costs too much) and the demo's on-path attacker (edgekit.scenarios.mitm). The agent and the
fleet use paho; nothing on their path imports this.
"""

from __future__ import annotations

import struct

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, DISCONNECT = 1, 2, 3, 4, 8, 9, 14


def encode_length(n: int) -> bytes:
    """The variable-length 'remaining length' (1-4 bytes, 7 bits each, low first)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + encode_length(len(body)) + body


def connect_packet(
    client_id: str, username: str, password: str, will_topic: str, will: bytes, keepalive: int
) -> bytes:
    flags = 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02  # user, password, will retain, will QoS 1, will, clean
    body = mqtt_str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body += (
        mqtt_str(client_id) + mqtt_str(will_topic) + mqtt_str(will) + mqtt_str(username) + mqtt_str(password)
    )
    return packet(CONNECT, 0, body)


def publish_packet(topic: str, payload: bytes, qos: int = 1, pid: int = 0, retain: bool = False) -> bytes:
    body = mqtt_str(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return packet(PUBLISH, qos << 1 | int(retain), body)


def subscribe_packet(pid: int, topic: str, qos: int = 1) -> bytes:
    return packet(SUBSCRIBE, 0x02, struct.pack("!H", pid) + mqtt_str(topic) + bytes([qos]))


def split_packets(buf: bytearray) -> list[tuple[int, int, bytes]]:
    """Complete packets at the front of `buf` as (type, flags, body); consumes them and leaves
    an incomplete rest in `buf` for the next read."""
    out, pos, n = [], 0, len(buf)
    while pos + 2 <= n:
        length, mult, i = 0, 1, pos + 1
        while True:
            if i >= n:
                del buf[:pos]
                return out
            b = buf[i]
            length += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
            if i - pos > 4:
                raise ValueError("malformed MQTT remaining length")
        if i + length > n:
            break
        out.append((buf[pos] >> 4, buf[pos] & 0x0F, bytes(buf[i : i + length])))
        pos = i + length
    del buf[:pos]
    return out


def parse_publish(flags: int, body: bytes) -> tuple[str, int, bytes, int]:
    """(topic, packet id or 0, payload, qos) of an incoming PUBLISH."""
    (tlen,) = struct.unpack_from("!H", body)
    topic = body[2 : 2 + tlen].decode("utf-8", "replace")
    qos = (flags >> 1) & 3
    pos = 2 + tlen
    pid = struct.unpack_from("!H", body, pos)[0] if qos else 0
    return topic, pid, body[pos + (2 if qos else 0) :], qos
