"""tokenspool: durable, resumable LLM output streams over a job queue."""

from __future__ import annotations

from .accumulator import Accumulator
from .client import AsyncClient, JobFailedError, OutputRestartedError
from .errors import (
    ClientError,
    FencedError,
    InvalidEventIdError,
    JobNotFoundError,
    JobStateError,
    ProviderError,
    StreamGoneError,
    TokenspoolError,
    UnknownModelError,
)
from .events import Event
from .jobs import JobRequest, JobStatus, JobView, Output
from .keys import Keys
from .settings import Settings
from .sync_client import Client
from .tailer import tail

__all__ = [
    "Accumulator",
    "AsyncClient",
    "Client",
    "ClientError",
    "Event",
    "FencedError",
    "InvalidEventIdError",
    "JobFailedError",
    "JobNotFoundError",
    "JobRequest",
    "JobStateError",
    "JobStatus",
    "JobView",
    "Keys",
    "Output",
    "OutputRestartedError",
    "ProviderError",
    "Settings",
    "StreamGoneError",
    "TokenspoolError",
    "UnknownModelError",
    "tail",
]
