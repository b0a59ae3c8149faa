"""Named crash points for crash-safety tests: `EDGEKIT_FAULT=<name>` makes the agent kill -9 itself there.

A claim like "acceptance and the downloading state are one atomic write" is only believable when
a real process dies at exactly the instant in question; a timed kill from outside cannot hit a
window of microseconds. Unset (the normal case) a crash point costs one environment lookup.
"""

from __future__ import annotations

import logging
import os
import signal

ENV = "EDGEKIT_FAULT"

log = logging.getLogger(__name__)


def crash_point(name: str) -> None:
    """SIGKILL this process if `EDGEKIT_FAULT` names this point (no cleanup, no flush: a power cut)."""
    if os.environ.get(ENV) == name:
        log.warning("fault injection: kill -9 at %s", name)
        for h in logging.getLogger().handlers:
            h.flush()
        os.kill(os.getpid(), signal.SIGKILL)
