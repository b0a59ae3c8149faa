"""A download cut off mid-body keeps the bytes it received, and the next attempt resumes there.

Regression: the body was read with httpx `iter_bytes(256 KiB)`, which buffers a whole chunk in
memory before anything is written; a link dropped (or a kill -9) before 256 KiB arrived left an
empty `.part`, so resuming an artifact smaller than that always started again from zero.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.download import DownloadError, download

BODY = bytes(range(256)) * 600  # 150 KiB: smaller than the old 256 KiB buffer
CUT = 60_000


class _Handler(http.server.BaseHTTPRequestHandler):
    ranges: list[str | None] = []
    cut = True

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(BODY) - start))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
        self.end_headers()
        if type(self).cut:
            # Send part of the body, then drop the connection: a link that dies mid-download.
            self.wfile.write(BODY[start:CUT])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(BODY[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    _Handler.ranges, _Handler.cut = [], True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/a"
    srv.shutdown()
    srv.server_close()


def test_cut_download_keeps_received_bytes_and_resumes(server: str, tmp_path: Path) -> None:
    part = tmp_path / "a.part"
    sha = hashlib.sha256(BODY).hexdigest()
    with pytest.raises(DownloadError) as e:
        download(server, part, size=len(BODY), sha256=sha, retries=0, timeout=5)
    assert e.value.reason == "unreachable"
    assert part.stat().st_size == CUT  # what arrived is on disk, not lost in a read buffer

    _Handler.cut = False
    download(server, part, size=len(BODY), sha256=sha, retries=0, timeout=5)
    assert _Handler.ranges == [None, f"bytes={CUT}-"]
    assert part.read_bytes() == BODY
