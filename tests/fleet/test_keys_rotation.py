"""`keys rotate` is crash-safe and works from an expired root.

The crash test runs a real rotation in a subprocess that kills itself with SIGKILL right before
its k-th filesystem mutation (a file opened for writing, a rename, an unlink), for every k until
the rotation completes, and then checks from a fresh process' point of view that the fleet can still sign a
manifest that agents verify: one enrolled at v1 walking the published chain, and one enrolled
with today's root.json. Then the next rotation must repair whatever was left and work too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from edgekit.trust import (
    ManifestVerifier,
    Root,
    build_manifest,
    dumps,
    load_trusted_root,
    sign,
    utcnow,
)
from fleet.keys import KeyStore
from tests.fleet.test_cli import edgekit, write_config

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]

# The child: count filesystem mutations, SIGKILL itself right before number `crash_at`. Patched
# in the child only, after interpreter start-up, before fleet.keys is imported.
CHILD = r"""
import builtins, io, os, signal, sys
from pathlib import Path

state, crash_at, new_root_key = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
count = 0

def fault_point():
    global count
    if count == crash_at:
        os.kill(os.getpid(), signal.SIGKILL)
    count += 1

def before(fn, mutates=lambda *a, **k: True):
    def hooked(*args, **kwargs):
        if mutates(*args, **kwargs):
            fault_point()
        return fn(*args, **kwargs)
    return hooked

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
os.replace, os.rename, os.unlink = before(os.replace), before(os.rename), before(os.unlink)
os.open = before(os.open, lambda path, flags, *a, **k: bool(flags & WRITE_FLAGS))
io.open = builtins.open = before(io.open, lambda f, mode="r", *a, **k: any(c in mode for c in "wax+"))
from fleet.keys import KeyStore
KeyStore(state).rotate(new_root_key=new_root_key)
print(count)
"""


def rotate_with_crash(state: Path, crash_at: int, new_root_key: bool) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(state), str(crash_at), "1" if new_root_key else "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_usable(state: Path, enrolled: Root, fleet: str = "kr") -> Root:
    """Sign with what the server would load; verify as agents enrolled at v1 and today."""
    ks = KeyStore(state)
    current, chain = ks.current_root(), ks.root_chain()
    now = utcnow()
    signed = build_manifest(
        fleet=fleet,
        device="d1",
        model="m",
        version="1",
        sequence=1,
        artifacts={
            "onnx": {"url": "/a", "sha256": "ef" * 32, "size": 1, "file": "m.onnx", "precision": "fp32"}
        },
        model_card={},
        now=now,
    )
    payload = dumps(sign(signed, [ks.release_key()]))
    for trusted in (enrolled, load_trusted_root((state / "root.json").read_bytes())):
        v = ManifestVerifier(trusted, fleet, "d1", now=now + timedelta(seconds=1))
        assert v.update_root(chain).version == current.version
        assert v.verify(payload).sequence == 1
    return current


def assert_settled(state: Path, version: int) -> None:
    keys = {p.name for p in (state / "keys").iterdir()} - {".lock"}
    assert keys == {"release.pem", "root.pem"}, keys  # no staged key, no temp file left
    for name in ("release.pem", "root.pem"):
        assert stat.S_IMODE(os.stat(state / "keys" / name).st_mode) == 0o600
    assert sorted(p.name for p in (state / "roots").iterdir()) == [
        f"{v}.root.json" for v in range(1, version + 1)
    ]
    assert json.loads((state / "root.json").read_text())["signed"]["version"] == version


@pytest.mark.parametrize("new_root_key", [False, True], ids=["release-key", "root-and-release-key"])
def test_kill9_at_every_write_point_of_rotate(tmp_path: Path, new_root_key: bool):
    """Regression: release.pem was written before root.json; a crash in between made every
    manifest fail fleet-wide with unknown_key."""
    template = tmp_path / "template"
    KeyStore(template).init("kr")
    KeyStore(template).rotate()  # a chain with history: v1 -> v2
    enrolled = load_trusted_root((template / "roots" / "1.root.json").read_bytes())

    crashes = 0
    for crash_at in range(60):
        state = tmp_path / f"crash-{crash_at}"
        shutil.copytree(template, state)
        p = rotate_with_crash(state, crash_at, new_root_key)
        if p.returncode == 0:  # crash_at is past the last mutation: the rotation completed
            assert int(p.stdout) == crash_at
            break
        assert p.returncode == -signal.SIGKILL, p.stderr
        crashes += 1
        v = assert_usable(state, enrolled).version
        assert v in (2, 3)  # before or after the commit point, never in between
        # The next rotation finishes or undoes the crashed one, and works.
        assert KeyStore(state).rotate(new_root_key=True).version == v + 1
        assert assert_usable(state, enrolled).version == v + 1
        assert_settled(state, v + 1)
    else:
        pytest.fail("rotation never completed")
    assert crashes >= (6 if new_root_key else 4)  # stage key(s), commit, promote, root.json
    assert_usable(state, enrolled)
    assert_settled(state, 3)


def test_rotate_from_an_expired_root_via_cli(tmp_path: Path):
    """Regression: `keys rotate` refused to run once root.json had expired."""
    cfg, _ = write_config(tmp_path)
    state = tmp_path / "state"
    past = utcnow() - timedelta(days=800)
    KeyStore(state, clock=lambda: past).init("cli")  # root v1 expired ~435 days ago
    v1 = load_trusted_root((state / "root.json").read_bytes())
    assert v1.is_expired()

    out = json.loads(edgekit("fleet", "keys", "rotate", "--json", cfg=cfg).stdout)
    assert out["version"] == 2
    ks = KeyStore(state)
    assert not ks.current_root().is_expired()
    # An agent enrolled with the expired v1 follows the rotation and accepts the new key.
    assert assert_usable(state, v1, fleet="cli").version == 2
