"""The Redis key layout, and every name stored in Redis, in one place.

A job's keys share the hash tag ``{<job_id>}`` so they live on one cluster slot and a
Lua script may touch them together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# fields of the job hash
F_STATUS = "status"
F_MODEL = "model"
F_REQUEST = "request"
F_ATTEMPT = "attempt"
F_WORKER = "worker"
F_CREATED = "created_at"
F_STARTED = "started_at"
F_FINISHED = "finished_at"
F_OUTPUT = "output"
F_USAGE = "usage"
F_ERROR = "error"
F_CANCEL = "cancel_requested"
F_IDEMPOTENCY = "idempotency_key"

# fields of a stream entry: the event type, the attempt, and the rest of the event as JSON
E_ORDINAL = "n"  # position in the stream, from 1: a reader detects trimmed gaps with it
F_ORDINAL = "n"  # on the job hash: the ordinal of the last entry
E_TYPE = "t"
E_ATTEMPT = "a"
E_DATA = "d"


@dataclass(frozen=True)
class Keys:
    """Builds the key names for one key prefix."""

    prefix: str = "tokenspool"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:{{{job_id}}}:job"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:{{{job_id}}}:events"

    def written(self, job_id: str) -> str:
        """Pub/sub channel on which every script that appends to the job's stream publishes
        the id of its last entry (the scripts derive it from ``events``: keep the two alike)."""
        return f"{self.prefix}:{{{job_id}}}:written"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idempotency:{key}"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel on which the API announces cancel requests to workers."""
        return f"{self.prefix}:cancel"

    @property
    def wake_channel(self) -> str:
        """Pub/sub channel on which the API wakes idle workers after queueing a job."""
        return f"{self.prefix}:wake"

    @property
    def running(self) -> str:
        """Sorted set of running job ids by lease deadline (ms); workers reap expired ones."""
        return f"{self.prefix}:running"

    @property
    def jobs_index(self) -> str:
        """Sorted set of recent job ids by creation time (for listings)."""
        return f"{self.prefix}:jobs"
