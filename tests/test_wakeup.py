"""Idle workers start a queued job when woken, not when their (here: hour-long) poll comes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tokenspool.client import AsyncClient
from tokenspool.stack import Stack, start_stack

from .conftest import stack_dir
from .helpers import expected


@pytest.fixture(scope="module")
def sleepy_stack() -> Iterator[Stack]:
    s = start_stack(
        workers=1,
        extra_env={"TOKENSPOOL_POLL_DELAY_SECONDS": "3600"},
        workdir=stack_dir("sleepy-stack"),
    )
    try:
        s.wait_ready()  # the worker's first poll has run; the next one is an hour away
        yield s
    finally:
        s.stop()


async def test_queued_job_starts_on_the_wake_up_message_not_the_poll(sleepy_stack: Stack) -> None:
    prompt = "wake up [fake chunks=4]"
    async with AsyncClient(sleepy_stack.api_url) as client:
        for _ in range(3):  # every job, not just the first after start-up
            job = await client.submit("fake-gpt", prompt)
            view = await client.wait(job.id)
            assert (
                view.status == "completed"
                and view.output.content == expected("fake-gpt", prompt).text
            )
