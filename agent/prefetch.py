"""Import the HTTP server's modules on a helper thread while the main thread loads the models.

Start-up is imports, then opening and warming up the models, then starting uvicorn. Opening an
onnxruntime session (graph optimization) and its warm-up run release the GIL for 0.1-0.3 s on a
MobileNet-size model, while importing uvicorn holds it for about as long: done on a helper thread
started first, the import overlaps the model load instead of following it (2 cores: the
time to ready shrinks by the import's share). Only uvicorn's own modules are imported here:
it imports nothing of ours, so the two threads cannot wait on each other's import locks.
"""

from __future__ import annotations

import importlib
import logging
import threading

log = logging.getLogger(__name__)

MODULES = ("uvicorn", "uvicorn.config", "uvicorn.server", "uvicorn.protocols.http.httptools_impl")


def _run() -> None:
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # the main thread imports it again and reports what is wrong
            log.debug("prefetch of %s failed: %s", name, e)
            return


def start() -> threading.Thread:
    """Begin importing MODULES; the main thread's own imports of them wait for (or skip) it."""
    thread = threading.Thread(target=_run, name="edgekit-prefetch", daemon=True)
    thread.start()
    return thread
