"""Prometheus metrics.

Counters and histograms are written by the listener and worker processes through
prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the supervisor
before it starts any child). Queue depth and age are not counted at all: the HTTP process
reads them from the queue at scrape time, so they are right even after a crash.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway.queue import Queue
from gateway.rules import RulesWatch
from gateway.spool import free_mb

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

RECEIVED = Counter(
    "gateway_received_instances_total", "Instances stored durably (Success sent)", ["calling_ae"]
)
RECEIVED_BYTES = Counter("gateway_received_bytes_total", "Bytes of instances stored durably")
STORES_FAILED = Counter(
    "gateway_store_failures_total", "C-STORE requests answered with a failure", ["reason"]
)
ASSOCIATIONS_REFUSED = Counter(
    "gateway_associations_refused_total", "Association requests rejected", ["reason"]
)
DELIVERED = Counter(
    "gateway_delivered_instances_total", "Instances delivered to a destination", ["destination"]
)
RETRIED = Counter(
    "gateway_delivery_retries_total", "Failed deliveries scheduled for retry", ["destination"]
)
DEAD_LETTERED = Counter(
    "gateway_dead_lettered_total", "Deliveries given up (dead letters)", ["destination"]
)
DROPPED = Counter("gateway_dropped_instances_total", "Instances consumed by a drop rule")
ARCHIVE_DELETED = Counter(
    "gateway_archive_deleted_instances_total", "Archived instances deleted by retention", ["reason"]
)
RULES_RELOADS = Counter(
    "gateway_rules_reloads_total", "Rule files loaded by a worker, or rejected", ["result"]
)
DELIVERY_LATENCY = Histogram(
    "gateway_delivery_latency_seconds",
    "From durable receive to delivery acknowledged by the destination",
    ["destination"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
)


class QueueCollector(Collector):
    """Queue depth and oldest age per destination and state, read from the database."""

    def __init__(self, db_path: Path, data_dir: Path) -> None:
        self.db_path = db_path
        self.data_dir = data_dir

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "gateway_queue_depth", "Jobs per destination and state", labels=["destination", "state"]
        )
        oldest = GaugeMetricFamily(
            "gateway_queue_oldest_age_seconds",
            "Age of the oldest undelivered instance per destination",
            labels=["destination"],
        )
        instances = GaugeMetricFamily(
            "gateway_spool_instances", "Instances held in the spool by state", labels=["state"]
        )
        disk = GaugeMetricFamily("gateway_disk_free_bytes", "Free bytes on the data directory")
        now = time.time()
        q = Queue(self.db_path)
        try:
            ages: dict[str, float] = {}
            for row in q.destination_stats():
                depth.add_metric([row["destination"], row["state"]], row["count"])
                if row["state"] != "delivered":
                    age = now - row["oldest_received_at"]
                    ages[row["destination"]] = max(ages.get(row["destination"], 0.0), age)
            for dest, age in ages.items():
                oldest.add_metric([dest], age)
            for state, n in q.instance_stats().items():
                instances.add_metric([state], n)
        finally:
            q.close()
        disk.add_metric([], free_mb(self.data_dir) * 1024 * 1024)
        yield from (depth, oldest, instances, disk)


class RulesCollector(Collector):
    """Whether the rule files on disk load (the previous rules keep running when not)."""

    def __init__(self, watch: RulesWatch) -> None:
        self.watch = watch

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rejected = GaugeMetricFamily(
            "gateway_rules_rejected",
            "1 while the rule files on disk are rejected (previous rules in effect)",
        )
        rejected.add_metric([], 1 if self.watch.problems else 0)
        in_effect = GaugeMetricFamily("gateway_rules_in_effect", "Rules in effect")
        in_effect.add_metric([], len(self.watch.rules.rules) if self.watch.rules else 0)
        yield from (rejected, in_effect)


def render(db_path: Path, data_dir: Path, watch: RulesWatch | None = None) -> bytes:
    """The /metrics body: every process's counters plus the queue's and rules' gauges."""
    registry = CollectorRegistry()
    registry.register(QueueCollector(db_path, data_dir))
    if watch is not None:
        registry.register(RulesCollector(watch))
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY) + generate_latest(registry)
