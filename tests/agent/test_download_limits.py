"""Bounded downloads (issue 10): a trickling, stalled or looping artifact server ends with a named
reason in bounded time, and a cancel stops even a read that is blocked on a silent socket.

Every server here is a real one on loopback (tests.agent.faulty_http)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.download import DownloadError, download
from agent.download_limits import DOWNLOAD_TIMEOUT, TOO_SLOW, DownloadLimits, judge
from tests.agent.faulty_http import FaultyArtifactServer

pytestmark = pytest.mark.timeout(60)
BODY = bytes(range(256)) * 400  # 100 KiB: at 1 byte/s, more than a day


@pytest.fixture
def www(tmp_path: Path) -> Path:
    d = tmp_path / "www"
    d.mkdir()
    (d / "a.bin").write_bytes(BODY)
    return d


@pytest.fixture
def server(www: Path) -> Iterator[FaultyArtifactServer]:
    with FaultyArtifactServer(www) as srv:
        yield srv


def fetch(server: FaultyArtifactServer, part: Path, limits: DownloadLimits, **kw) -> Path:
    sha = hashlib.sha256(BODY).hexdigest()
    return download(
        server.file_url("a.bin"), part, size=len(BODY), sha256=sha, retries=0, timeout=30, limits=limits, **kw
    )


def test_judge_names_deadline_first_then_rate() -> None:
    lim = DownloadLimits(deadline_s=100, min_bytes_per_s=10, slow_window_s=5)
    assert judge(lim, now=3, deadline=100, window_start=0, window_bytes=0) is None  # window not over
    assert judge(lim, now=5, deadline=100, window_start=0, window_bytes=49) == TOO_SLOW
    assert judge(lim, now=5, deadline=100, window_start=0, window_bytes=50) is None
    assert judge(lim, now=100, deadline=100, window_start=99, window_bytes=10**9) == DOWNLOAD_TIMEOUT
    off = DownloadLimits(min_bytes_per_s=0, slow_window_s=1)
    assert judge(off, now=50, deadline=100, window_start=0, window_bytes=0) is None


def test_one_byte_per_second_server_is_too_slow(server: FaultyArtifactServer, tmp_path: Path) -> None:
    server.bytes_per_s = 1
    part = tmp_path / "a.part"
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as e:
        fetch(server, part, DownloadLimits(min_bytes_per_s=100, slow_window_s=1, deadline_s=600))
    assert e.value.reason == TOO_SLOW
    assert time.monotonic() - t0 < 10  # the window, not the 30 s read timeout nor the deadline
    assert 0 < part.stat().st_size < len(BODY)  # what arrived stays for a resume


def test_overall_deadline_bounds_a_steady_trickle(server: FaultyArtifactServer, tmp_path: Path) -> None:
    server.bytes_per_s = 200  # fast enough for any rate check, 8 minutes for the body
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as e:
        fetch(server, tmp_path / "a.part", DownloadLimits(min_bytes_per_s=0, deadline_s=1.0))
    elapsed = time.monotonic() - t0
    assert e.value.reason == DOWNLOAD_TIMEOUT
    assert 1.0 <= elapsed < 10


def test_cancel_wakes_a_read_blocked_on_a_silent_server(server: FaultyArtifactServer, tmp_path: Path) -> None:
    server.bytes_per_s = 0.05  # one byte, then 20 s of silence: the reader sits in recv()
    first_byte, cancel = threading.Event(), threading.Event()
    cancelled_at: list[float] = []

    def cancel_after_first_byte() -> None:
        first_byte.wait(20)
        cancelled_at.append(time.monotonic())
        cancel.set()

    threading.Thread(target=cancel_after_first_byte, daemon=True).start()
    with pytest.raises(DownloadError) as e:
        fetch(
            server,
            tmp_path / "a.part",
            DownloadLimits(min_bytes_per_s=0),
            cancel=cancel,
            on_progress=lambda have, size: first_byte.set(),
        )
    assert e.value.reason == "cancelled"
    assert time.monotonic() - cancelled_at[0] < 2.0  # promptly, not after the 30 s read timeout


def test_redirect_loop_is_named(server: FaultyArtifactServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as e:
        download(
            server.url + "/loop/0",
            tmp_path / "a.part",
            size=len(BODY),
            sha256="0" * 64,
            retries=3,
            limits=DownloadLimits(max_redirects=4),
        )
    assert e.value.reason == "too_many_redirects"
    assert len(server.requests) == 5  # the first request and 4 redirects followed; never retried
    assert not (tmp_path / "a.part").exists()


def test_config_keys_and_refusal(tmp_path: Path) -> None:
    from agent.config import load_agent_config
    from agent.daemon import Agent
    from edgekit.errors import ConfigError

    p = tmp_path / "a.toml"
    base = f'[agent]\ndevice="d"\ndata_dir="{tmp_path / "data"}"\n[mqtt]\nenabled=false\n[server]\nenabled=false\n'
    p.write_text(base + "[download]\ndeadline_s = 90\nmin_bytes_per_s = 0\n")
    opts = Agent(load_agent_config(p))._download_opts()
    assert opts["limits"] == DownloadLimits(deadline_s=90, min_bytes_per_s=0)
    p.write_text(base + "[download]\ndeadline_s = -1\n")
    with pytest.raises(ConfigError, match=r"\[download\]: deadline_s"):
        load_agent_config(p)
