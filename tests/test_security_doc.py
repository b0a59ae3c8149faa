"""docs/security.md names, for every threat, the tests that prove it: each must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_row_names_existing_tests() -> None:
    doc = (ROOT / "docs" / "security.md").read_text()
    rows = [ln for ln in doc.splitlines() if ln.startswith("| ") and not ln.startswith(("| Attack", "|---"))]
    assert len(rows) >= 15
    defined = set()
    for f in (ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", f.read_text(), re.M))
    for row in rows:
        named = re.findall(r"`(test_\w+)`", row.split("|")[3])
        assert named, f"row without a test: {row}"
        missing = [t for t in named if t not in defined]
        assert not missing, f"{missing} named in docs/security.md do not exist"
