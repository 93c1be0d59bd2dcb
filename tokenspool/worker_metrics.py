"""Prometheus metrics of a worker process, served on ``TOKENSPOOL_WORKER_METRICS_PORT``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WorkerMetrics:
    """What a worker counts; label values are bounded sets (statuses, error classes, models)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.attempts = Counter(
            "tokenspool_worker_attempts", "Attempts started, by model", ["model"], registry=r
        )
        self.finished = Counter(
            "tokenspool_worker_jobs_finished",
            "Attempts ended, by outcome (completed, failed, cancelled, lost, abandoned, retry)",
            ["outcome"],
            registry=r,
        )
        self.provider_errors = Counter(
            "tokenspool_worker_provider_errors",
            "Provider errors, by error class",
            ["type"],
            registry=r,
        )
        self.takeovers = Counter(
            "tokenspool_worker_takeovers",
            "Jobs taken over from a worker whose lease expired",
            registry=r,
        )
        self.events_written = Counter(
            "tokenspool_worker_events_written", "Events appended to job streams", registry=r
        )
        self.redis_writes = Counter(
            "tokenspool_worker_redis_writes",
            "Fenced write script calls to Redis (pipelined: many jobs share a round trip)",
            registry=r,
        )
        self.redis_round_trips = Counter(
            "tokenspool_worker_redis_round_trips",
            "Round trips of the process's event writer to Redis (each carries many jobs' writes)",
            registry=r,
        )
        self.active = Gauge(
            "tokenspool_worker_active_streams", "Provider streams running now", registry=r
        )
        self.pickup = Histogram(
            "tokenspool_worker_pickup_seconds",
            "From job creation to its first attempt starting",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "tokenspool_worker_time_to_first_token_seconds",
            "From job creation to the first output event of the attempt that produced it",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for outcome in ("completed", "failed", "cancelled", "lost", "abandoned", "retry"):
            self.finished.labels(outcome)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` from a background thread."""
        start_http_server(port, addr=host, registry=self.registry)
