"""Add `--hash=sha256:...` to a toolchain lock, so `pip install --require-hashes` refuses any file
that is not the one the lock was made with (a replaced upload, a compromised mirror).

    python -m converters.toolchains.hashlock converters/toolchains/locks/*.txt

For each platform in PLATFORMS, `pip install --dry-run --no-deps --report` resolves every pin to
the file pip would install there (nothing is downloaded but metadata); the report carries each
file's sha256. A pin gets the hashes of every platform that has it; a platform lacking some pin
(coremltools has no aarch64 Linux wheel) is left out with a note. Comments and order are kept.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# (label, extra pip arguments): the interpreter running this script, then other Linux CPUs.
PLATFORMS: list[tuple[str, list[str]]] = [
    ("this machine", []),
    (
        "linux aarch64 cp311",
        [
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--platform",
            "manylinux_2_28_aarch64",
            "--platform",
            "manylinux2014_aarch64",
        ],
    ),
]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> list[tuple[str, str] | str]:
    """Pins as (name, version) in order, comments and blank lines as strings; hash lines dropped."""
    out: list[tuple[str, str] | str] = []
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        m = PIN.match(line)
        if m:
            out.append((m.group(1), m.group(2)))
        elif not line.startswith("--hash"):
            out.append(raw)
    return out


def render(entries: list[tuple[str, str] | str], hashes: dict[str, set[str]]) -> str:
    lines = []
    for e in entries:
        if isinstance(e, str):
            lines.append(e)
            continue
        name, version = e
        digests = sorted(hashes.get(canonical(name), ()))
        if not digests:
            raise SystemExit(f"no hash found for {name}=={version}")
        lines.append(" \\\n".join([f"{name}=={version}", *(f"    --hash=sha256:{d}" for d in digests)]))
    return "\n".join(lines) + "\n"


def platform_hashes(pins: list[tuple[str, str]], args: list[str]) -> dict[str, set[str]] | None:
    with tempfile.TemporaryDirectory() as tmp:
        req, report = Path(tmp) / "req.txt", Path(tmp) / "report.json"
        req.write_text("".join(f"{n}=={v}\n" for n, v in pins))
        target = ["--target", str(Path(tmp) / "t")] if args else []
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--no-deps"]
        p = subprocess.run(
            [*cmd, *args, *target, "--report", str(report), "-r", str(req)], capture_output=True, text=True
        )
        if p.returncode != 0:
            return None
        out: dict[str, set[str]] = {}
        for item in json.loads(report.read_text())["install"]:
            digest = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
            if digest:
                out.setdefault(canonical(item["metadata"]["name"]), set()).add(digest)
        return out


def main(paths: list[str]) -> None:
    for path in map(Path, paths):
        entries = parse_lock(path.read_text())
        pins = [e for e in entries if isinstance(e, tuple)]
        hashes: dict[str, set[str]] = {}
        for label, args in PLATFORMS:
            got = platform_hashes(pins, args)
            if got is None:
                print(f"{path.name}: {label}: not every pin has a file there; skipped", file=sys.stderr)
                continue
            for k, v in got.items():
                hashes.setdefault(k, set()).update(v)
        path.write_text(render(entries, hashes))
        print(f"{path.name}: {len(pins)} pins, {sum(map(len, hashes.values()))} hashes", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
