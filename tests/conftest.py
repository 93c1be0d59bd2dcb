"""Shared fixtures: a real stack (Valkey, fake provider, API, workers) as processes on loopback."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from tokenspool.client import AsyncClient
from tokenspool.connections import close, connect
from tokenspool.keys import Keys
from tokenspool.settings import Settings
from tokenspool.stack import Stack, start_stack
from tokenspool.store import JobStore

from .proxy import DroppingProxy

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

# settings the stack's processes run with; small where a test needs to observe the effect
STACK_ENV = {
    "TOKENSPOOL_HEARTBEAT_SECONDS": "0.3",
    "TOKENSPOOL_MAX_JOBS": "4",
    "TOKENSPOOL_CANCEL_CHECK_SECONDS": "1",
    "TOKENSPOOL_READ_BLOCK_MS": "1000",
}
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def stack_dir(name: str) -> Path:
    """A fresh directory for one stack's logs and data; unique per test run, so runs in
    parallel (several people, or CI beside a developer) never share one."""
    ARTIFACTS.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=ARTIFACTS))


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """One stack for the session: 2 workers, API, fake provider, Redis."""
    s = start_stack(workers=2, extra_env=STACK_ENV, workdir=stack_dir("stack"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    return Settings(
        redis_url=stack.redis.url,
        models_file=Path(stack.env["TOKENSPOOL_MODELS_FILE"]),
        read_block_ms=1000,
    )


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = connect(settings)
    try:
        yield client
    finally:
        await close(client)


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
async def store(redis: Redis, settings: Settings) -> JobStore:
    return JobStore(redis, settings)


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(stack.api_url, read_timeout=30) as c:
        yield c


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as c:
        yield c


@pytest.fixture
async def proxy_factory() -> AsyncIterator[object]:
    """Makes DroppingProxy instances in front of a port; stops them all afterwards."""
    made: list[DroppingProxy] = []

    async def make(port: int) -> DroppingProxy:
        proxy = await DroppingProxy(port).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.stop()


# the fault tests' stack: short grace, idle timeout and backoff so faults resolve quickly
FAULT_ENV = {
    "TOKENSPOOL_MAX_JOBS": "4",
    "TOKENSPOOL_SHUTDOWN_GRACE_SECONDS": "2",
    "TOKENSPOOL_PROVIDER_IDLE_TIMEOUT_SECONDS": "1.5",
    "TOKENSPOOL_RETRY_BASE_SECONDS": "0.1",
    "TOKENSPOOL_READ_BLOCK_MS": "1000",
}


@pytest.fixture(scope="session")
def fault_stack() -> Iterator[Stack]:
    """A second stack for tests that kill, pause and stop its processes."""
    s = start_stack(workers=2, extra_env=FAULT_ENV, workdir=stack_dir("fault-stack"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
async def fclient(fault_stack: Stack) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(fault_stack.api_url, read_timeout=30, max_reconnects=100) as c:
        yield c
