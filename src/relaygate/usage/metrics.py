"""Prometheus metrics (prometheus-client), in a registry of the gateway's own: requests, latency,
tokens, cost, upstream attempts by outcome, key states, ledger depth and drops, response cache
results and the money its hits saved. No label ever
carries a key or a client's identity."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from relaygate.keys.pool import KeyPool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _StateCollector(Collector):
    def __init__(self, pools: Callable[[], Iterable[KeyPool]], depth: Callable[[], int]) -> None:
        self._pools = pools
        self._depth = depth

    def collect(self) -> Iterable[Metric]:
        keys = GaugeMetricFamily(
            "relaygate_upstream_keys", "Upstream keys by state", labels=["provider", "state"]
        )
        for pool in self._pools():
            counts = dict.fromkeys(("ready", "cooling", "exhausted", "invalid"), 0)
            for item in pool.states():
                counts[item["state"]] += 1
            for name, n in counts.items():
                keys.add_metric([pool.provider, name], n)
        yield keys
        depth = GaugeMetricFamily("relaygate_ledger_queue_depth", "Ledger rows waiting")
        depth.add_metric([], self._depth())
        yield depth
        try:  # the soak (bench/soak.py) watches this one for leaked tasks
            running = len(asyncio.all_tasks())
        except RuntimeError:  # collected outside the event loop's thread
            return
        tasks = GaugeMetricFamily("relaygate_event_loop_tasks", "asyncio tasks alive")
        tasks.add_metric([], running)
        yield tasks


class Metrics:
    def __init__(self, pools: Callable[[], Iterable[KeyPool]], depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "relaygate_requests",
            "Proxied requests",
            ["route", "provider", "model", "status"],
            registry=r,
        )
        self.refusals = Counter(
            "relaygate_refusals",
            "Requests refused before any upstream call",
            ["reason"],
            registry=r,
        )
        self.latency = Histogram(
            "relaygate_request_latency_seconds",
            "Whole request latency",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "relaygate_time_to_first_token_seconds",
            "Time to the first byte",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "relaygate_tokens", "Tokens", ["provider", "model", "kind"], registry=r
        )
        self.cost = Counter("relaygate_cost_usd", "Cost in USD", ["provider", "model"], registry=r)
        self.attempts = Counter(
            "relaygate_upstream_attempts",
            "Upstream attempts by outcome",
            ["provider", "outcome"],
            registry=r,
        )
        self.ledger_drops = Counter(
            "relaygate_ledger_dropped_rows", "Ledger rows dropped past the buffer bound", registry=r
        )
        self.cache = Counter(
            "relaygate_cache_requests",
            "Response cache lookups by result (hit, miss, bypass)",
            ["route", "result"],
            registry=r,
        )
        self.cache_saved = Counter(
            "relaygate_cache_saved_usd",
            "What the cache hits would have cost upstream, in USD",
            registry=r,
        )
        r.register(_StateCollector(pools, depth))

    def render(self) -> bytes:
        return generate_latest(self.registry)
