"""A throttling HTTP reverse proxy in front of the fleet's artifact server: a slow store uplink.

The fleet's `[http] public_url` points here, so every artifact URL in a manifest goes through it.
It forwards `Range` / `If-Range` (so resumption is end to end against the real server), paces the
body at `rate` bytes/s per connection (a 150 KiB artifact takes ~5 s at 30 KB/s: long enough to
kill an agent mid-download deterministically), logs every request (path, Range start, status,
bytes sent), and can be stopped and started again on the same port: stopping closes the listener
(new connections are refused) and cuts every body in flight, like a CDN edge going away.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
from dataclasses import dataclass

FORWARD_REQUEST = ("Range", "If-Range", "If-None-Match", "If-Modified-Since", "Accept-Encoding")
FORWARD_RESPONSE = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "ETag",
    "Last-Modified",
    "Cache-Control",
)
PIECE = 4096  # bytes per paced write


@dataclass
class ProxyRequest:
    path: str
    range_start: int | None  # from `Range: bytes=N-`; None for a whole-file request
    status: int = 0
    sent: int = 0
    complete: bool = False
    at: float = 0.0


class ThrottlingProxy:
    def __init__(self, upstream_port: int, port: int, rate: float = 30_000.0):
        self.upstream_port, self.port, self.rate = upstream_port, port, rate
        self.log: list[ProxyRequest] = []
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._generation = 0  # bumped by stop(): handlers of an older generation cut their body
        self._conns: set[socket.socket] = set()

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> ThrottlingProxy:
        proxy = self
        gen = self._generation

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: simple to cut

            def do_GET(self) -> None:
                proxy._handle(self, gen)

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            allow_reuse_address = True  # restart on the same port while old sockets linger
            daemon_threads = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Refuse new connections and cut every transfer in flight."""
        with self._lock:
            self._generation += 1
            conns, self._conns = list(self._conns), set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # requests --------------------------------------------------------------------------------
    def requests_for(self, sha256: str) -> list[ProxyRequest]:
        with self._lock:
            return [r for r in self.log if r.path.endswith(sha256)]

    def _handle(self, h: http.server.BaseHTTPRequestHandler, gen: int) -> None:
        rng = h.headers.get("Range")
        start = None
        if rng and rng.startswith("bytes=") and rng.split("=", 1)[1].split("-")[0].isdigit():
            start = int(rng.split("=", 1)[1].split("-")[0])
        entry = ProxyRequest(h.path, start, at=time.monotonic())
        with self._lock:
            self.log.append(entry)
            self._conns.add(h.connection)
        up = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        try:
            up.request("GET", h.path, headers={k: v for k in FORWARD_REQUEST if (v := h.headers.get(k))})
            resp = up.getresponse()
            entry.status = resp.status
            h.send_response(resp.status)
            for k in FORWARD_RESPONSE:
                if (v := resp.getheader(k)) is not None:
                    h.send_header(k, v)
            h.end_headers()
            t0 = time.monotonic()
            while piece := resp.read(PIECE):
                if gen != self._generation:
                    return  # stopped: the connection is cut mid-body
                h.wfile.write(piece)
                h.wfile.flush()
                entry.sent += len(piece)
                # Pace: never ahead of `rate` bytes/s since the body started.
                ahead = entry.sent / self.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            entry.complete = True
        except OSError:
            pass  # the client went away (killed agent) or we were stopped
        finally:
            up.close()
            with self._lock:
                self._conns.discard(h.connection)
