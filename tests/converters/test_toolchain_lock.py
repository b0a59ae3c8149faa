"""Toolchain installs: the locks carry sha256 hashes that pip enforces (--require-hashes), adding
them keeps installed toolchains valid, and concurrent installs are serialized by a file lock that
real processes contend for."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from converters.toolchains import manager
from converters.toolchains.hashlock import parse_lock, render
from converters.toolchains.install_lock import LockBusyError, held, lock_path

REPO = Path(__file__).resolve().parents[2]
LOCKS = sorted(manager.LOCKS.glob("*.txt"))

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from converters.toolchains.install_lock import held
    with held(Path(sys.argv[1])):
        print("held", flush=True)
        sys.stdin.readline()  # hold until the test says so (or is killed)
    print("released", flush=True)
    """
)


def _holder(path: Path) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_a_second_process_waits_for_the_first(tmp_path: Path) -> None:
    path = lock_path(tmp_path / "toolchains" / "tensorflow-0123456789ab")
    assert path.name == "tensorflow-0123456789ab.lock"
    first = _holder(path)
    try:
        with pytest.raises(LockBusyError, match=f"pid {first.pid}"), held(path, timeout=0):
            pass
        assert first.stdin is not None
        first.stdin.write("\n")
        first.stdin.flush()
        assert first.stdout is not None and first.stdout.readline().strip() == "released"
        with held(path, timeout=10):  # free now
            pass
    finally:
        first.kill()
        first.wait(10)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    path = tmp_path / "coreml-0123456789ab.lock"
    first = _holder(path)
    with pytest.raises(LockBusyError), held(path, timeout=0):
        pass
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    with held(path, timeout=10):
        pass


def test_blocking_waiters_take_turns(tmp_path: Path) -> None:
    """Two processes append 'in'/'out' around their critical section: never interleaved."""
    path, log = tmp_path / "x.lock", tmp_path / "log"
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from converters.toolchains.install_lock import held
        log = Path(sys.argv[2])
        for _ in range(50):
            with held(Path(sys.argv[1])):
                with log.open("a") as f:
                    f.write("in\\n")
                with log.open("a") as f:
                    f.write("out\\n")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path), str(log)], cwd=REPO, env=env)
        for _ in range(2)
    ]
    assert [p.wait(60) for p in procs] == [0, 0]
    lines = log.read_text().split()
    assert len(lines) == 200 and lines == ["in", "out"] * 100


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_every_pin_has_a_hash(lock: Path) -> None:
    entries = parse_lock(lock.read_text())
    pins = [e for e in entries if isinstance(e, tuple)]
    assert pins
    for name, version in pins:
        block = re.search(
            rf"^{re.escape(name)}=={re.escape(version)}((?: \\\n\s*--hash=sha256:[0-9a-f]{{64}})+)$",
            lock.read_text(),
            re.M,
        )
        assert block, f"{lock.name}: {name}=={version} has no --hash"


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_hashes_do_not_change_the_toolchain_digest(
    lock: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed toolchains are keyed by their lock's digest: adding hashes must not orphan them."""
    tc = next(t for t in manager.TOOLCHAINS.values() if t.lock_path == lock)
    with_hashes = tc.digest()
    bare = tmp_path / "locks"
    bare.mkdir()
    (bare / lock.name).write_text(
        "\n".join(e if isinstance(e, str) else f"{e[0]}=={e[1]}" for e in parse_lock(lock.read_text())) + "\n"
    )
    monkeypatch.setattr(manager, "LOCKS", bare)
    assert tc.digest() == with_hashes


def test_render_round_trips() -> None:
    text = "# c\na==1 \\\n    --hash=sha256:" + "1" * 64 + "\nb==2\n"
    entries = parse_lock(text)
    assert entries == ["# c", ("a", "1"), ("b", "2")]
    out = render(entries, {"a": {"2" * 64}, "b": {"3" * 64, "4" * 64}})
    assert parse_lock(out) == entries and out.count("--hash=sha256:") == 3


@pytest.mark.timeout(300)
def test_pip_enforces_the_hashes(tmp_path: Path) -> None:
    """pip resolves the smaller lock with --require-hashes, and refuses it with one hash changed."""
    lock = manager.LOCKS / "coreml.txt"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--no-deps"]
    ok = subprocess.run(
        [*pip, "--require-hashes", "-r", str(lock)], capture_output=True, text=True, timeout=240
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    text = lock.read_text()
    first = re.search(r"--hash=sha256:([0-9a-f]{64})", text)
    assert first
    bad = tmp_path / "coreml.txt"
    bad.write_text(text.replace(first.group(1), "0" * 64, 1))
    refused = subprocess.run(
        [*pip, "--require-hashes", "-r", str(bad)], capture_output=True, text=True, timeout=240
    )
    assert refused.returncode != 0 and "DO NOT MATCH THE HASHES" in refused.stderr
