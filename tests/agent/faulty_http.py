"""A real artifact server on loopback that misbehaves on purpose: trickles bytes, cuts the link
mid-body, or redirects in a loop. Plain http.server threads, so each fault is exact bytes on a
real socket (no mocked transport)."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Any


class FaultyArtifactServer:
    """Serves `root/<name>` at `/files/<name>` (Range-capable) and loops at `/loop/<n>`.

    Faults are attributes, changeable while a response is being sent:
      bytes_per_s  None: full speed; else one byte every 1/bytes_per_s seconds
      cut_at       None: whole body; else drop the connection once this offset was sent
    """

    def __init__(self, root: Path):
        self.root = root
        self.bytes_per_s: float | None = None
        self.cut_at: int | None = None
        self.requests: list[tuple[str, str | None]] = []
        self.sent: dict[str, int] = {}  # bytes of each file put on the wire, all requests
        self._stop = threading.Event()
        self._srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._srv.server_address[1]}"

    def file_url(self, name: str) -> str:
        return f"{self.url}/files/{name}"

    def start(self) -> FaultyArtifactServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # ends trickles still writing to a client
        self._srv.shutdown()
        self._srv.server_close()

    def __enter__(self) -> FaultyArtifactServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if self.path.startswith("/loop/"):
                    n = int(self.path.rsplit("/", 1)[1])
                    self.send_response(302)
                    self.send_header("Location", f"/loop/{n + 1}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = server.root / self.path.removeprefix("/files/")
                if not self.path.startswith("/files/") or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self._body(path.name, data, start)

            def _body(self, name: str, data: bytes, pos: int) -> None:
                try:
                    while pos < len(data) and not server._stop.is_set():
                        if server.cut_at is not None and pos >= server.cut_at:
                            self.connection.shutdown(2)  # the link dies mid-body
                            return
                        rate = server.bytes_per_s
                        end = len(data) if rate is None else pos + 1
                        if server.cut_at is not None:
                            end = min(end, server.cut_at)
                        self.wfile.write(data[pos:end])
                        self.wfile.flush()
                        server.sent[name] = server.sent.get(name, 0) + end - pos
                        pos = end
                        if rate is not None:
                            server._stop.wait(1.0 / rate)
                except OSError:
                    pass  # the client went away (or stopped us): nothing to send to

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
