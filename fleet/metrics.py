"""The fleet server's Prometheus metrics (`GET /metrics` on the admin port), on prometheus_client.

Read from the database at scrape time, so every replica answers the same fleet-wide numbers and
nothing is kept in step by hand: devices by reported state and online, rollouts by state, the
outbox's pending messages and the age of the oldest (the publish lag: what was committed but not
yet acknowledged by the broker). This replica's own counters: status and online messages by
ingestion outcome, manifests published, and whether it holds the leader lease. Plus the standard
`process_*` / `python_*` collectors and `edgekit_build_info`; OpenMetrics when the scraper asks.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, GCCollector, Info, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from edgekit import __version__

if TYPE_CHECKING:
    from fleet.server import FleetServer


class FleetCollector(Collector):
    def __init__(self, server: FleetServer):
        self.server = server

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self.server
        devices = GaugeMetricFamily(
            "edgekit_fleet_devices", "Devices by last reported state", labels=["state"]
        )
        for state, n in s.db.query("SELECT COALESCE(state, 'unknown'), COUNT(*) FROM devices GROUP BY 1"):
            devices.add_metric([state], n)
        yield devices
        (online,) = s.db.query("SELECT COUNT(*) FROM devices WHERE online = 1")[0]
        yield GaugeMetricFamily(
            "edgekit_fleet_devices_online", "Devices whose online flag is set", value=online
        )
        rollouts = GaugeMetricFamily("edgekit_fleet_rollouts", "Rollouts by state", labels=["state"])
        for state, n in s.db.query("SELECT state, COUNT(*) FROM rollouts GROUP BY state"):
            rollouts.add_metric([state], n)
        yield rollouts
        pending, oldest = s.db.query("SELECT COUNT(*), MIN(created) FROM outbox WHERE sent IS NULL")[0]
        yield GaugeMetricFamily(
            "edgekit_fleet_outbox_pending",
            "Committed messages not yet acknowledged by the broker",
            value=pending,
        )
        yield GaugeMetricFamily(
            "edgekit_fleet_publish_lag_seconds",
            "Age of the oldest unacknowledged outbox message (0 when none)",
            value=max(0.0, time.time() - oldest) if oldest is not None else 0.0,
        )
        ingest = CounterMetricFamily(
            "edgekit_fleet_status_messages", "Status/online messages by ingestion outcome", labels=["outcome"]
        )
        for outcome, n in s.outcomes.snapshot().items():
            ingest.add_metric([outcome], n)
        yield ingest
        yield CounterMetricFamily(
            "edgekit_fleet_manifests_published", "Manifests this replica published", value=s.publisher.sent
        )
        yield GaugeMetricFamily(
            "edgekit_fleet_leader", "1 if this replica holds the leader lease", value=1 if s.leads() else 0
        )


def registry_for(server: FleetServer) -> CollectorRegistry:
    reg = CollectorRegistry()
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    Info("edgekit_build", "edgekit build", registry=reg).info(
        {"version": __version__, "component": "fleet", "python": platform.python_version()}
    )
    reg.register(FleetCollector(server))
    return reg


def render(reg: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition in the format the scraper negotiated (OpenMetrics or text 0.0.4)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(reg), content_type
