"""Log lines carry the job id, in plain and JSON form."""

from __future__ import annotations

import io
import json
import logging

from tokenspool.logs import JobIdFilter, JsonFormatter, current_job


def _capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(JobIdFilter())
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_json_log_lines_carry_the_current_job_id() -> None:
    logger, stream = _capture(JsonFormatter())
    token = current_job.set("job_abc")
    try:
        logger.info("attempt %d started", 1)
    finally:
        current_job.reset(token)
    logger.info("idle")

    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["job_id"] == "job_abc" and first["message"] == "attempt 1 started"
    assert second["job_id"] == "-"


def test_plain_log_lines_carry_the_current_job_id() -> None:
    logger, stream = _capture(logging.Formatter("[%(job_id)s] %(message)s"))
    token = current_job.set("job_xyz")
    try:
        logger.warning("lease lost")
    finally:
        current_job.reset(token)

    assert stream.getvalue().strip() == "[job_xyz] lease lost"
