"""The child interpreter of the coverage runner: `python _serve.py --serve` (see runner.py).

Speaks the worker protocol of converters/toolchains/workers/_worker.py, so the parent drives it
with manager.PersistentWorker like any toolchain worker (time limit, kill and restart included).
"""

from converters.coverage.runner import handle
from converters.toolchains.workers._worker import main

if __name__ == "__main__":
    main(handle)
