"""`edgekit fleet serve` under yappi (every thread, CPU clock), for bench/fleet.py --profile.

    python bench/profiled_serve.py OUT.pstats fleet serve --config fleet.toml

cProfile sees only the main thread; the fleet server's work is on its engine, outbox, paho and
uvicorn threads. The stats are written when the server exits (SIGTERM stops it cleanly).
"""

from __future__ import annotations

import atexit
import sys
from pathlib import Path


def main() -> None:
    import yappi  # not a dependency: `pip install yappi` to profile

    out, argv = sys.argv[1], sys.argv[2:]
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo, not bench/ (bench/agent.py)
    yappi.set_clock_type("cpu")
    yappi.start()

    def dump() -> None:
        yappi.stop()
        yappi.get_func_stats().save(out, type="pstat")

    atexit.register(dump)
    from edgekit.cli import main as cli

    cli(argv)


if __name__ == "__main__":
    main()
