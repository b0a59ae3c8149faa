"""An attacker on the network path between one agent and its MQTT broker (MQTT 3.1.1, plain TCP).

Everything is relayed unchanged except PUBLISH packets on a `.../desired` topic travelling to the
agent: their payload goes through `rewrite` and the packet is re-framed (new remaining length),
so the agent receives a well-formed MQTT message carrying whatever the attacker made of the
manifest. The framing is pure functions (edgekit.mqttwire, `rewrite_publish`); the relay is a
small asyncio server in a thread of its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from edgekit.launch import free_ports
from edgekit.mqttwire import PUBLISH, packet, parse_publish, split_packets


def rewrite_publish(kind: int, flags: int, body: bytes, rewrite: Callable[[str, bytes], bytes]) -> bytes:
    """The packet (kind, flags, body), re-framed, with its payload replaced by
    rewrite(topic, payload) if it is a PUBLISH on a `desired` topic; any other packet as it was."""
    if kind == PUBLISH:
        topic, _pid, payload, _qos = parse_publish(flags, body)
        if topic.endswith("/desired"):
            body = body[: len(body) - len(payload)] + rewrite(topic, payload)
    return packet(kind, flags, body)


class DesiredRewriter:
    """Listen on 127.0.0.1:`port` (free), relay to the broker on `upstream_port`, rewrite what
    comes back on `desired`. `rewritten` counts the payloads `rewrite` changed."""

    def __init__(self, upstream_port: int, rewrite: Callable[[str, bytes], bytes]):
        self.upstream_port, self.rewrite = upstream_port, rewrite
        (self.port,) = free_ports(1)
        self.rewritten = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mitm", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> DesiredRewriter:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", self.port), self._loop
        )
        self._server = fut.result(timeout=10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _changed(self, topic: str, payload: bytes) -> bytes:
        out = self.rewrite(topic, payload)
        self.rewritten += out != payload
        return out

    async def _client(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            b_reader, b_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            c_writer.close()
            return

        async def to_broker() -> None:
            while data := await c_reader.read(65536):
                b_writer.write(data)
                await b_writer.drain()

        async def to_agent() -> None:
            buf = bytearray()
            while data := await b_reader.read(65536):
                buf += data
                out = (rewrite_publish(k, f, b, self._changed) for k, f, b in split_packets(buf))
                c_writer.write(b"".join(out))
                await c_writer.drain()

        tasks = [asyncio.ensure_future(to_broker()), asyncio.ensure_future(to_agent())]
        try:  # either side closing (or an error in either direction) ends the connection
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for w in (c_writer, b_writer):
                w.close()
