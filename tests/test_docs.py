"""Docs that run: the shell blocks marked runnable in README.md and docs/*.md are executed, in
order, one bash per file (so `cmd &` and files carry from block to block), against the real
processes they start (`edgekit fleet serve`, `edgekit agent run`, ...).

Marking a block: an HTML comment `<!-- runnable -->` on the line right before a ```bash fence
(invisible on GitHub). Each file's script runs with `set -euo pipefail` in an empty temporary
directory holding a copy of deploy/, with HOME and EDGEKIT_HOME in it and this venv's bin first
on PATH; background jobs are killed at the end. It runs in its own network namespace, so the
default ports the docs use (1883, 8080, 8780, 8781) are free whatever else runs on the machine.
Keep marked blocks fast (all of them < 60 s); long ones stay unmarked.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = "<!-- runnable -->"
DEFAULT_PORTS = (1883, 8080, 8780, 8781)
TIMEOUT_S = 120


def runnable_blocks(text: str) -> list[str]:
    """Bodies of the ```bash / ```sh blocks preceded by MARKER (a marker elsewhere is an error)."""
    lines = text.splitlines()
    blocks: list[str] = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if fence not in ("```bash", "```sh"):
            raise ValueError(f"line {i + 1}: {MARKER} must be followed by a ```bash fence, got {fence!r}")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"line {i + 2}: unclosed ```bash block")
        blocks.append("\n".join(lines[i + 2 : end]))
    return blocks


def test_runnable_blocks_parser() -> None:
    text = f"x\n```bash\nnot marked\n```\n{MARKER}\n```bash\necho a\necho b\n```\n{MARKER}\n```sh\nc\n```\n"
    assert runnable_blocks(text) == ["echo a\necho b", "c"]
    with pytest.raises(ValueError, match="must be followed"):
        runnable_blocks(f"{MARKER}\n```python\nx\n```\n")
    with pytest.raises(ValueError, match="unclosed"):
        runnable_blocks(f"{MARKER}\n```bash\nx\n")


def test_the_readme_quick_tour_is_marked() -> None:
    blocks = runnable_blocks((REPO / "README.md").read_text())
    assert any("edgekit fleet publish" in b and "edgekit agent run" in b for b in blocks)


def _netns_prefix() -> list[str] | None:
    """A command prefix giving the script a private loopback, or None when none can be made."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    for flags in (["--net"], ["--user", "--map-root-user", "--net"]):
        if (
            subprocess.run(
                ["unshare", *flags, "ip", "link", "set", "lo", "up"], capture_output=True
            ).returncode
            == 0
        ):
            return ["unshare", *flags, "bash", "-c", 'ip link set lo up && exec bash "$0"']
    return None


def _ports_free() -> bool:
    for port in DEFAULT_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _script(blocks: list[str]) -> str:
    return "\n".join(
        [
            "set -euo pipefail",
            # Every background job the docs start ends with the script, whatever happened.
            "trap 'kill $(jobs -p) 2>/dev/null || true; wait || true' EXIT",
            *blocks,
        ]
    )


DOCS_WITH_BLOCKS = [p for p in DOCS if runnable_blocks(p.read_text())]


@pytest.mark.timeout(TIMEOUT_S + 30)
@pytest.mark.parametrize("doc", DOCS_WITH_BLOCKS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_runnable_blocks_run(doc: Path, tmp_path: Path) -> None:
    prefix = _netns_prefix()
    if prefix is None:
        if not _ports_free():
            pytest.skip(f"no network namespace (unshare --net) and a default port of {DEFAULT_PORTS} is busy")
        prefix = ["bash"]
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(REPO / "deploy", work / "deploy")
    script = tmp_path / "doc.sh"
    script.write_text(_script(runnable_blocks(doc.read_text())))
    home = tmp_path / "home"
    env = {
        **os.environ,
        "HOME": str(home),
        "EDGEKIT_HOME": str(home / ".cache" / "edgekit"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
    }
    # The converter toolchains are big and cached: share the user's, as a fresh clone's docs do.
    real_home = Path(os.environ.get("EDGEKIT_HOME", Path.home() / ".cache" / "edgekit"))
    if (real_home / "toolchains").is_dir():
        (home / ".cache" / "edgekit").mkdir(parents=True)
        (home / ".cache" / "edgekit" / "toolchains").symlink_to(real_home / "toolchains")
    proc = subprocess.Popen(
        [*prefix, str(script)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(
            f"{doc.name}: runnable blocks did not finish in {TIMEOUT_S} s\n{out[-4000:]}{_logs(work)}"
        )
    assert proc.returncode == 0, f"{doc.name}: exit {proc.returncode}\n{out[-4000:]}{_logs(work)}"


def _logs(work: Path) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(work.glob("*.log")))


def _tls_files(d: Path) -> None:
    """A CA and a device certificate signed by it: what the sample's mqtt.ca/cert/key name."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def cert(subject: str, key, issuer: str, signer, ca: bool) -> bytes:
        now = datetime.now(UTC)
        c = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )
        return c.public_bytes(serialization.Encoding.PEM)

    ca_key, dev_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    (d / "ca.pem").write_bytes(cert("edgekit test CA", ca_key, "edgekit test CA", ca_key, True))
    (d / "device.pem").write_bytes(cert("store-042", dev_key, "edgekit test CA", ca_key, False))
    (d / "device.key").write_bytes(
        dev_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _edgekit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_sample_configs_load(tmp_path: Path) -> None:
    """deploy/fleet.toml checks ok verbatim. deploy/agent.toml names files under /etc/edgekit that
    an installed box has (root.json from the fleet, the TLS material): verbatim it names exactly
    those; with /etc/edgekit rewritten to a directory holding real ones, it checks ok."""
    fleet = _edgekit("fleet", "check", "--config", str(REPO / "deploy" / "fleet.toml"))
    assert fleet.returncode == 0 and fleet.stdout.strip() == "ok", fleet.stdout + fleet.stderr

    sample = (REPO / "deploy" / "agent.toml").read_text()
    verbatim = _edgekit("agent", "check", "--config", str(REPO / "deploy" / "agent.toml"))
    assert verbatim.returncode == 2 and "Traceback" not in verbatim.stderr
    named = sorted(re.findall(r"(/etc/edgekit/\S+?):", verbatim.stdout))
    assert named == sorted(
        [
            "/etc/edgekit/root.json",
            "/etc/edgekit/ca.pem",
            "/etc/edgekit/device.pem",
            "/etc/edgekit/device.key",
        ]
    )

    etc = tmp_path / "etc" / "edgekit"
    etc.mkdir(parents=True)
    keys = _edgekit("fleet", "keys", "init", "--config", str(_fleet_toml(tmp_path)))
    assert keys.returncode == 0, keys.stderr
    shutil.copy(tmp_path / "fleet" / "root.json", etc / "root.json")
    _tls_files(etc)
    text = sample.replace("/etc/edgekit/", f"{etc}/").replace(
        "/var/lib/edgekit-agent", str(tmp_path / "agent")
    )
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text)
    ok = _edgekit("agent", "check", "--config", str(cfg))
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stdout + ok.stderr
    assert not (tmp_path / "agent").exists()  # check writes nothing


def _fleet_toml(tmp_path: Path) -> Path:
    p = tmp_path / "fleet.toml"
    p.write_text(f'[server]\nfleet = "default"\nstate_dir = "{tmp_path / "fleet"}"\n')
    return p


def test_make_demo_installs_only_what_the_demo_needs(tmp_path: Path) -> None:
    """`make demo` installs the base package plus the broker extra, never the dev extra (torch).
    edgekit/demo.py needs nothing else: it was run to completion in a venv holding exactly that."""
    p = subprocess.run(
        ["make", "-n", "demo", f"VENV={tmp_path / 'venv'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    installs = [line for line in p.stdout.splitlines() if " install " in line and "-e" in line]
    assert installs == [f"{tmp_path / 'venv'}/bin/pip install -q -e '.[broker]'"], p.stdout
