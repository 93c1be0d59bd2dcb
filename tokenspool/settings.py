"""All configuration, read from ``TOKENSPOOL_*`` environment variables in one place."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODELS_FILE = Path(__file__).with_name("default_models.yaml")


class Settings(BaseSettings):
    """Every tunable of tokenspool; one instance is built at start-up and passed down."""

    model_config = SettingsConfigDict(env_prefix="TOKENSPOOL_", extra="ignore", frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_max_connections: int = Field(4096, ge=8)  # per process; one per blocked stream reader
    key_prefix: str = Field("tokenspool", pattern=r"^[A-Za-z0-9_.-]+$")
    models_file: Path = DEFAULT_MODELS_FILE

    # retention of a finished job's stream and hash
    retention_seconds: int = Field(24 * 3600, ge=1)
    # safety cap on one job's stream (XADD MAXLEN ~); a job longer than this loses its head
    stream_maxlen: int = Field(100_000, ge=100)

    # consumers
    read_count: int = Field(100, ge=1, le=10_000)  # XREAD COUNT: the largest batch in memory
    read_block_ms: int = Field(5_000, ge=1, le=60_000)  # XREAD BLOCK; socket timeout exceeds it
    heartbeat_seconds: float = Field(15.0, gt=0)  # SSE comment while idle
    send_timeout_seconds: float = Field(30.0, gt=0)  # one SSE write to a client

    # worker
    max_jobs: int = Field(256, ge=1)  # streams are I/O-bound: one process holds many
    job_timeout_seconds: float = Field(600.0, gt=0)  # total deadline of one attempt
    provider_idle_timeout_seconds: float = Field(60.0, gt=0)  # per-read idle timeout
    # read OpenAI-compatible streams with aiohttp directly (same events, far less CPU per chunk);
    # off: every model goes through litellm
    fast_path: bool = True
    # arq queue poll; a wake-up message after each enqueue starts idle workers at once, so this
    # only bounds pickup when that message is lost (each poll re-checks every running job)
    poll_delay_seconds: float = Field(0.25, gt=0)
    cancel_check_seconds: float = Field(1.0, gt=0)  # fallback poll for cancel flags
    # full garbage collections in the API and workers run on this timer, not on CPython's
    # counters (tokenspool/gcpolicy.py)
    gc_full_seconds: float = Field(60.0, gt=0)
    queue_name: str = "tokenspool:queue"

    # fault tolerance (docs/protocol.md, "Attempts, leases and retries")
    lease_seconds: float = Field(3.0, gt=0)  # a running attempt is taken over after this
    lease_renew_seconds: float = Field(1.0, gt=0)
    reap_interval_seconds: float = Field(0.5, gt=0)  # how often workers look for lost jobs
    max_attempts: int = Field(4, ge=1)
    retry_base_seconds: float = Field(0.5, ge=0)  # backoff: base * 2**(n-1), full jitter
    retry_max_seconds: float = Field(30.0, ge=0)
    midstream_policy: Literal["retry", "fail"] = "retry"  # errors after output began
    shutdown_grace_seconds: float = Field(10.0, ge=0)  # SIGTERM: let streams finish, then hand over
    redis_outage_seconds: float = Field(30.0, gt=0)  # a worker abandons an attempt after this
    max_pending_events: int = Field(1024, ge=1)  # per attempt, while Redis is slow or away

    # API request limits
    max_body_bytes: int = Field(1_000_000, ge=1_000)
    max_messages: int = Field(1_000, ge=1)
    max_tokens_ceiling: int = Field(128_000, ge=1)

    # embedded servers (demo and `tokenspool api`)
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    fake_llm_port: int = 8765
    log_json: bool = False
    worker_metrics_port: int | None = Field(None, ge=0, le=65535)  # None: no worker /metrics

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` only (the process environment by default)."""
        if environ is None:
            return cls()
        values = {
            key[len("TOKENSPOOL_") :].lower(): value
            for key, value in environ.items()
            if key.startswith("TOKENSPOOL_")
        }
        checked = _ExplicitSettings.model_validate(values)
        return cls.model_construct(_fields_set=checked.model_fields_set, **dict(checked))


class _ExplicitSettings(Settings):
    """Validates the values given only, never the process environment (``from_env``)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: Any,
        init_settings: Any,
        env_settings: Any,
        dotenv_settings: Any,
        file_secret_settings: Any,
    ) -> tuple[Any, ...]:
        return (init_settings,)
