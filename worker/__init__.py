"""The arq worker: thin wiring from the queue to :func:`tokenspool.runner.run_job`."""

from .main import build_worker, run_worker

__all__ = ["build_worker", "run_worker"]
