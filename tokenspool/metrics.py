"""Prometheus metrics of the API, in a registry of their own (one per app, so tests and several
apps in one process never collide on the global default registry)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
        self.events_relayed = Counter(
            "tokenspool_events_relayed",
            "Job events sent to stream clients, by transport",
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
        self.events_replayed = Counter(
            "tokenspool_events_replayed",
            "Events sent that were already in the stream when the client connected (catch-up)",
            ["transport"],
            registry=r,
        )
        self.consumer_lag = Histogram(
            "tokenspool_consumer_lag_seconds",
            "Age of each event when sent to a client (now minus the time in its stream id)",
            ["transport"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30, 300, 3600),
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
            self.events_relayed.labels(transport)
            self.events_replayed.labels(transport)
        self._hub = _HubCollector()
        r.register(self._hub)
        # per-event metrics, looked up once rather than with labels() per event
        self._children = {
            t: (
                self.events_relayed.labels(t),
                self.events_replayed.labels(t),
                self.consumer_lag.labels(t),
            )
            for t in TRANSPORTS
        }

    def track_hub(self, stats: Callable[[], Mapping[str, int]]) -> None:
        """Export the stream hub's counters (``Hub.stats``) from now on."""
        self._hub.stats = stats

    def relayed_batch(
        self, transport: str, entry_ids: Sequence[bytes | str], head: tuple[int, int]
    ) -> None:
        """Count a batch of events sent together: relayed, replayed if they predate the
        connection (``head`` is the stream's last id then), and each one's age (consumer lag;
        stream ids carry milliseconds). The counters move once per batch."""
        relayed, replayed_counter, lag = self._children[transport]
        relayed.inc(len(entry_ids))
        now_ms = time.time() * 1000
        replayed = 0
        for entry_id in entry_ids:
            ms, _, seq = (entry_id if isinstance(entry_id, bytes) else entry_id.encode()).partition(
                b"-"
            )
            at = int(ms)
            if at <= head[0] and (at, int(seq or 0)) <= head:
                replayed += 1
            lag.observe(max(0.0, now_ms - at) / 1000)
        if replayed:
            replayed_counter.inc(replayed)

    def render(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
