"""The one error hierarchy of tokenspool."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# what a lost or unreachable Redis raises (redis-py's errors, not ours): the loops that wait it
# out and retry catch these
REDIS_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


class TokenspoolError(Exception):
    """Root of every error tokenspool raises."""


class ConfigError(TokenspoolError):
    """The settings or the models file are invalid."""


class UnknownModelError(TokenspoolError):
    """The requested model is not in the models file."""

    def __init__(self, model: str, available: list[str]) -> None:
        self.model = model
        self.available = available
        super().__init__(
            f"unknown model {model!r}; configured models: {', '.join(available) or '(none)'}"
        )


class JobNotFoundError(TokenspoolError):
    """No job with this id exists (never did, or it expired)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r} not found (unknown or expired)")


class InvalidEventIdError(TokenspoolError, ValueError):
    """An event id (``after`` / ``Last-Event-ID``) is not a stream entry id."""

    def __init__(self, value: str) -> None:
        self.value = value
        super().__init__(
            f"invalid event id {value!r}: expected '0' or a stream id like '1700000000000-0'"
        )


class JobStateError(TokenspoolError):
    """The job is not in a state that allows the operation (e.g. cancelling a finished job)."""

    def __init__(self, job_id: str, status: str, action: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"cannot {action} job {job_id!r}: it is already {status}")


class IdempotencyConflictError(TokenspoolError):
    """An Idempotency-Key was reused with a different request body."""

    def __init__(self, key: str, job_id: str, message: str = "") -> None:
        self.key = key
        self.job_id = job_id
        super().__init__(
            message
            or f"Idempotency-Key {key!r} was already used for job {job_id} with a different body"
        )


class FencedError(TokenspoolError):
    """A write was refused because another attempt owns the job (or it already ended)."""


class ProviderError(TokenspoolError):
    """The model provider answered with an error or broke the stream."""

    def __init__(
        self,
        type_: str,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
    ) -> None:
        self.type = type_
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after
        self.retryable = retryable
        super().__init__(f"{type_}: {message}")


class StreamGoneError(TokenspoolError):
    """The requested offset is older than what the stream still retains."""


class StreamReadError(TokenspoolError):
    """Redis answered a read of one job's stream with an error (e.g. the key holds another
    type); that job's clients get it, the other streams go on (tokenspool/hub.py)."""


class HubClosedError(TokenspoolError):
    """The stream hub was stopped (or its reader failed) while a consumer waited on it."""


class ClientError(TokenspoolError):
    """The HTTP API answered a client request with an error status."""

    def __init__(self, status_code: int, detail: object) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"HTTP {status_code}: {detail}")
