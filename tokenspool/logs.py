"""Logging setup: plain or JSON lines, one format for every process."""

from __future__ import annotations

import contextvars
import json
import logging
import time

from .settings import Settings

# the job a log line is about: set by the worker around each attempt, read by every formatter
current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)


class JobIdFilter(logging.Filter):
    """Puts the current job id on every record (``record.job_id``, "-" outside a job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = current_job.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", None),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup_logging(settings: Settings, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(JobIdFilter())
    if settings.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(job_id)s]: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("LiteLLM", "litellm", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
