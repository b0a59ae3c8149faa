"""Circuit breaker for the cloud link: closed -> open -> half-open -> closed.

After `failure_threshold` consecutive failures the breaker opens and calls fail fast (an offline
store must not wait a network timeout per request). After `reset_timeout` seconds one probe is
let through (half-open); its success closes the breaker, its failure re-opens it. A call that
was allowed must end in exactly one of record_success, record_failure or release: a probe that
ends any other way (an exception nobody classified) would hold the only half-open slot forever.
"""

from __future__ import annotations

import threading
import time

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 3, reset_timeout: float = 10.0, clock=time.monotonic):
        self.failure_threshold = max(1, failure_threshold)
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> str:
        with self._lock:
            return self._current()

    def _current(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.reset_timeout:
            self._state = HALF_OPEN
            self._probe_in_flight = False
        return self._state

    def allow(self) -> bool:
        """May a call go out now? In half-open only one probe at a time."""
        with self._lock:
            st = self._current()
            if st == CLOSED:
                return True
            if st == HALF_OPEN and not self._probe_in_flight:
                self._probe_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._state = CLOSED
            self._failures = 0
            self._probe_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            st = self._current()
            self._failures += 1
            if st == HALF_OPEN or self._failures >= self.failure_threshold:
                self._state = OPEN
                self._opened_at = self._clock()
                self._probe_in_flight = False

    def release(self) -> None:
        """An allowed call ended without saying anything about the link (it raised before or
        instead of an answer): free the probe slot, state unchanged, so the next call probes."""
        with self._lock:
            self._probe_in_flight = False
