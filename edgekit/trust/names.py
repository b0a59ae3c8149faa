"""Safe names: what a signed manifest may use where the agent turns a value into a path.

The model name becomes a directory (`models/<model>/pointer.json`, the state file) and an
artifact's file name and key pick the stored blob's suffix. A signed manifest is still input:
a release key can leak and a fleet operator can make typos, so these values get one rule:

    1 to 128 characters from  A-Z a-z 0-9 . _ -
    starting with a letter or digit (no hidden files, no `.`/`..`), and no `..` anywhere.

No `/`, `\\`, drive letters, spaces, control characters or non-ASCII, so a safe name is one
path component on every OS, and the same in URLs, topics and logs.
"""

from __future__ import annotations

import re

MAX_NAME_LENGTH = 128
_SAFE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_LENGTH - 1}}}")


def is_safe_name(value: object) -> bool:
    return isinstance(value, str) and _SAFE.fullmatch(value) is not None and ".." not in value


def check_safe_name(kind: str, value: object) -> str:
    """`value` if it is a safe name, else ValueError naming `kind` and the rule (for the fleet
    to refuse a model name at publish time, before anything gets signed)."""
    if not is_safe_name(value):
        shown = value[:40] + "..." if isinstance(value, str) and len(value) > 40 else value
        raise ValueError(
            f"invalid {kind} {shown!r}: use 1-{MAX_NAME_LENGTH} of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit, without '..'"
        )
    assert isinstance(value, str)
    return value
