"""Prometheus metrics of the API, in a registry of their own (one per app, so tests and several
apps in one process never collide on the global default registry)."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE", "ApiMetrics"]

# label values: bounded sets, never ids or paths
TRANSPORTS = ("sse", "sse_openai", "websocket")
SURFACES = ("jobs", "chat_completions")


# the stream hub's counters (tokenspool.hub.Hub.stats), read when scraped: name, help, kind
HUB_METRICS = (
    ("reads", "XREADs the stream hub sent", "counter"),
    ("streams_read", "Streams named in the stream hub's XREADs", "counter"),
    ("notifications", "New-entry notifications the stream hub received", "counter"),
    (
        "handed_over",
        "Events the stream hub gave to waiting consumers straight from a notification (no read)",
        "counter",
    ),
    (
        "pushed",
        "Of the events handed over, those relayed without waking the consumer's task",
        "counter",
    ),
    (
        "catch_ups",
        "Streams read without a notification: a new consumer or a (re)subscription",
        "counter",
    ),
    ("sweeps", "Sweeps of every waiting stream (lost notifications, expired keys)", "counter"),
    ("waiting", "Consumers waiting on the stream hub now", "gauge"),
    ("jobs", "Jobs the stream hub has consumers for (and is subscribed to) now", "gauge"),
)


class _HubCollector(Collector):
    """Exports the stream hub's own counters at scrape time (nothing to update per read)."""

    def __init__(self) -> None:
        self.stats: Callable[[], Mapping[str, int]] | None = None

    def collect(self) -> Iterator[Metric]:
        stats = self.stats() if self.stats is not None else {}
        for name, doc, kind in HUB_METRICS:
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(f"tokenspool_hub_{name}", doc, value=stats.get(name, 0))


# buckets of the consumer lag (seconds): the age of each event when it is sent
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30, 300, 3600)


class _RelayCounts:
    """What was relayed on one transport: plain numbers, updated once per batch sent."""

    __slots__ = ("lag_buckets", "lag_sum", "relayed", "replayed")

    def __init__(self) -> None:
        self.relayed = 0
        self.replayed = 0
        self.lag_buckets = [0] * (len(LAG_BUCKETS) + 1)  # per bucket, not cumulative; +Inf last
        self.lag_sum = 0.0


class _RelayCollector(Collector):
    """Exports the relay counts at scrape time as a Counter and a Histogram would: the
    per-event metrics cost a few additions each, not a locked update of each metric."""

    def __init__(self, counts: Mapping[str, _RelayCounts]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        relayed = CounterMetricFamily(
            "tokenspool_events_relayed",
            "Job events sent to stream clients, by transport",
            labels=["transport"],
        )
        replayed = CounterMetricFamily(
            "tokenspool_events_replayed",
            "Events sent that were already in the stream when the client connected (catch-up)",
            labels=["transport"],
        )
        lag = HistogramMetricFamily(
            "tokenspool_consumer_lag_seconds",
            "Age of each event when sent to a client (now minus the time in its stream id)",
            labels=["transport"],
        )
        bounds = [floatToGoString(b) for b in LAG_BUCKETS] + ["+Inf"]
        for transport, counts in self.counts.items():
            relayed.add_metric([transport], counts.relayed)
            replayed.add_metric([transport], counts.replayed)
            cumulative, total = [], 0
            for bound, count in zip(bounds, counts.lag_buckets, strict=True):
                total += count
                cumulative.append((bound, total))
            lag.add_metric([transport], cumulative, counts.lag_sum)
        yield relayed
        yield replayed
        yield lag


class ApiMetrics:
    """Counters, gauges and histograms the API updates; ``render()`` is the /metrics body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs_submitted = Counter(
            "tokenspool_jobs_submitted",
            "Jobs queued (repeated Idempotency-Keys not counted), by model and API surface",
            ["model", "api"],
            registry=r,
        )
        self.stream_clients = Gauge(
            "tokenspool_stream_clients",
            "Event stream clients connected now, by transport",
            ["transport"],
            registry=r,
        )
        self.stream_resumes = Counter(
            "tokenspool_stream_resumes",
            "Event stream connections that started after a non-zero offset, by transport",
            ["transport"],
            registry=r,
        )
        self.stream_seconds = Histogram(
            "tokenspool_stream_duration_seconds",
            "How long event stream connections stayed open, by transport",
            ["transport"],
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
            registry=r,
        )
        self.http_errors = Counter(
            "tokenspool_http_errors",
            "HTTP responses with a 4xx or 5xx status, by status",
            ["status"],
            registry=r,
        )
        for transport in TRANSPORTS:  # export zeros before the first client, too
            self.stream_clients.labels(transport)
            self.stream_resumes.labels(transport)
        self._hub = _HubCollector()
        r.register(self._hub)
        # the per-event metrics, exported at scrape time (zeros before the first client, too)
        self._relay = {t: _RelayCounts() for t in TRANSPORTS}
        r.register(_RelayCollector(self._relay))

    def track_hub(self, stats: Callable[[], Mapping[str, int]]) -> None:
        """Export the stream hub's counters (``Hub.stats``) from now on."""
        self._hub.stats = stats

    def relayed_batch(
        self, transport: str, entry_ids: Sequence[bytes | str], head: tuple[int, int]
    ) -> None:
        """Count a batch of events sent together: relayed, replayed if they predate the
        connection (``head`` is the stream's last id then), and each one's age (consumer lag;
        stream ids carry milliseconds)."""
        counts = self._relay[transport]
        counts.relayed += len(entry_ids)
        now_ms = time.time() * 1000
        buckets = counts.lag_buckets
        for entry_id in entry_ids:
            ms, _, seq = (entry_id if isinstance(entry_id, bytes) else entry_id.encode()).partition(
                b"-"
            )
            at = int(ms)
            if at <= head[0] and (at, int(seq or 0)) <= head:
                counts.replayed += 1
            lag = max(0.0, now_ms - at) / 1000
            buckets[bisect_left(LAG_BUCKETS, lag)] += 1  # the first bucket with lag <= its bound
            counts.lag_sum += lag

    def render(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
