"""The leader lease: which replica of a fleet ticks the rollout engine and publishes the outbox.

Replicas share one database. Any of them serves the admin API and artifacts; exactly one, the
holder of the `leader` row of the `leases` table, runs what must happen once: the rollout tick,
the outbox publisher and the broker session that ingests device reports. The holder renews the
row every `ttl / 3`; the others try to take it as often, and get it once it has expired, so a
dead leader is replaced within one lease period (plus at most one try interval).

Expiry is on the database's clock (one clock for every replica). A holder trusts its lease
until `ttl` after the moment it *sent* the claim, on its own monotonic clock, which is never
later than the expiry the database recorded: a leader that stalls (GC, swap, a lost network)
stops acting before anyone else may take over (the claim is timed once its transaction has begun,
before the statement reaches the database). Correctness does not rest on the lease alone:
every rollout step is a compare-and-set and sequences are assigned in one UPDATE, so even two
leaders at once never send one device two manifests for one sequence.

A leader also needs the broker: one cut off from it (its network to the broker, not to the
database) can neither publish nor take reports. LeaseKeeper's `down_for` says for how long it
has not been able to; at the first claim after `ttl / 3` of that (a failover to the next broker
node takes less, and is no reason), the leader releases the lease and another replica takes
over at its next try: within one lease period of the cut (at most 2/3 of it plus the new
leader's connect).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fleet import repository as repo
from fleet.db import BaseDatabase

log = logging.getLogger(__name__)

LEADER = "leader"


class Lease:
    def __init__(
        self,
        db: BaseDatabase,
        holder: str,
        ttl: float,
        name: str = LEADER,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.db, self.holder, self.ttl, self.name, self.clock = db, holder, ttl, name, clock
        self._valid_until = float("-inf")

    def claim(self) -> bool:
        """Take or renew the lease; False when another holder has it or the database is away."""
        try:
            with self.db.tx() as c:
                # Timed once the transaction is ours: a wait for the process's database lock
                # (a long batch of reports) must not eat into the lease.
                sent = self.clock()
                won = repo.lease_claim(c, self.name, self.holder, self.ttl)
        except Exception as e:  # the database is away: the lease runs out on its own
            log.warning("lease %s: cannot reach the database: %s", self.name, e)
            return self.held()
        self._valid_until = sent + self.ttl if won else float("-inf")
        return won

    def held(self) -> bool:
        return self.clock() < self._valid_until

    def release(self) -> None:
        """Give the lease up now (a clean stop): another replica takes over at its next try."""
        self._valid_until = float("-inf")
        try:
            with self.db.tx() as c:
                repo.lease_release(c, self.name, self.holder)
        except Exception as e:
            log.warning("lease %s: could not release (it expires by itself): %s", self.name, e)

    def holder_now(self) -> tuple[str, float] | None:
        with self.db.lock:
            return repo.lease_holder(self.db.conn, self.name)


def give_up(down_for: float, ttl: float) -> bool:
    """Whether a leader unable to do its work for `down_for` seconds should release the lease."""
    return down_for >= ttl / 3


class LeaseKeeper:
    """Claims the lease every `ttl / 3` in a thread and calls `on_gain` / `on_lose` on changes."""

    def __init__(
        self,
        lease: Lease,
        on_gain: Callable[[], None],
        on_lose: Callable[[], None],
        down_for: Callable[[], float] = lambda: 0.0,
    ):
        """`down_for`: seconds the leader has been unable to do its work (0.0 while it can)."""
        self.lease, self.on_gain, self.on_lose, self.down_for = lease, on_gain, on_lose, down_for
        self.leading = False
        self._benched_until = float("-inf")  # after giving up: let another replica have it first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self, raise_errors: bool = False) -> bool:
        """One claim and the transition it causes; returns whether this replica now leads."""
        if self.leading and give_up(self.down_for(), self.lease.ttl):
            log.warning("replica %s cannot reach the broker; giving up the lease", self.lease.holder)
            self.lease.release()
            self._lose()
            # Not straight back: a connect to a broker that does not answer could hold the lease
            # for its timeout while a healthy replica waits.
            self._benched_until = self.lease.clock() + self.lease.ttl
            return False
        if not self.leading and self.lease.clock() < self._benched_until:
            return False
        held = self.lease.claim()
        if held and not self.leading:
            try:
                self.on_gain()
            except Exception as e:  # e.g. the broker is away: let another replica try
                self.lease.release()
                self._lose()
                if raise_errors:
                    raise
                log.warning("could not take the lead (%s); released the lease", e)
                return False
            self.leading = True
            log.info("replica %s leads", self.lease.holder)
        elif not held and self.leading:
            self._lose()
        return self.leading

    def _lose(self) -> None:
        if self.leading:
            log.warning("replica %s lost the lease; standing by", self.lease.holder)
        self.leading = False
        try:
            self.on_lose()
        except Exception:
            log.exception("stepping down failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.lease.ttl / 3):
            self.step()
            # lost between claims (the database stayed away): step down before anyone takes over
            if self.leading and not self.lease.held():
                self._lose()

    def stop(self) -> None:
        """Stop claiming (the owner steps down and releases in its own order)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
