"""Prometheus metrics of the container, summed over its worker processes.

Use one `Metrics` per app (created in the app factory, never a module global) and render it on
`GET /metrics`. With several workers the launcher sets `PROMETHEUS_MULTIPROC_DIR` (a fresh directory
per container start) before any worker imports prometheus_client; every worker then writes its values
there and one scrape of any worker shows the whole container: counters and histograms summed,
jobs in flight summed over live workers, pool members down the most any live worker sees.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

_SOURCES = {0: "onchain", 1: "offchain"}
_MAX_CHILDREN = 64
_DESTINATIONS = {0: "onchain", 1: "offchain", 2: "stream"}


class Metrics:
    """Jobs by source/destination/outcome, upstream latency, retries, jobs in flight, and pool
    failovers and members down."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs = Counter(
            "infernet_tgi_jobs",
            "Jobs answered, by source, destination and outcome (ok or the HTTP status).",
            ["source", "destination", "outcome"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "infernet_tgi_upstream_latency_seconds",
            "Latency of one upstream attempt (to the last byte; to the first event for streams).",
            ["kind", "outcome"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.retries = Counter(
            "infernet_tgi_upstream_retries",
            "Upstream attempts retried, by the error that caused the retry.",
            ["error"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "infernet_tgi_jobs_in_flight",
            "Jobs being processed now.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.failovers = Counter(
            "infernet_tgi_upstream_failovers",
            "Calls moved to the next pool member, by the error that caused the move.",
            ["error"],
            registry=self.registry,
        )
        self.upstreams_down = Gauge(
            "infernet_tgi_upstreams_down",
            "Pool members marked down and waiting for their health check to pass.",
            registry=self.registry,
            multiprocess_mode="livemax",  # each worker checks the same members: the worst view counts
        )
        # Labelled children by label values, so a job does not pay `labels()` (a lock and a label
        # check) each time; bounded: sources, destinations, kinds and outcomes are small fixed sets.
        self._job_children: dict[tuple[int | None, int | None, str], Any] = {}
        self._attempt_children: dict[tuple[str, str], Any] = {}
        directory = os.environ.get(MULTIPROC_DIR)
        self._scrape = self.registry
        if directory:
            self._scrape = CollectorRegistry()
            MultiProcessCollector(self._scrape, path=directory)  # type: ignore[no-untyped-call]

    def job_done(self, source: int | None, destination: int | None, outcome: str) -> None:
        key = (source, destination, outcome)
        child = self._job_children.get(key)
        if child is None:
            child = self.jobs.labels(
                _SOURCES.get(source, "unknown") if source is not None else "unknown",
                _DESTINATIONS.get(destination, "unknown") if destination is not None else "unknown",
                outcome,
            )
            if len(self._job_children) < _MAX_CHILDREN:  # sources come from jobs: any int
                self._job_children[key] = child
        child.inc()

    def attempt(self, kind: str, outcome: str, seconds: float) -> None:
        """One upstream attempt of `kind` ("generate" or "stream") that took `seconds`."""
        key = (kind, outcome)
        child = self._attempt_children.get(key)
        if child is None:
            child = self._attempt_children[key] = self.upstream_latency.labels(kind, outcome)
        child.observe(seconds)

    def render(self) -> bytes:
        """The text exposition: of every worker of the container when there are several."""
        return generate_latest(self._scrape)
