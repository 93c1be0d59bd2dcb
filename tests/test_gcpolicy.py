"""The garbage-collection policy of the API and worker processes (tokenspool/gcpolicy.py)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from tokenspool.gcpolicy import (
    MIDDLE_THRESHOLD,
    NO_AUTOMATIC_FULL,
    YOUNG_THRESHOLD,
    freeze_startup_objects,
    full_collections,
)
from tokenspool.tasks import stop_task


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_startup_objects_are_frozen_and_full_passes_left_to_the_timer(restore_gc: None) -> None:
    freeze_startup_objects()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_THRESHOLD, MIDDLE_THRESHOLD, NO_AUTOMATIC_FULL)


async def test_the_timer_collects_cyclic_garbage(restore_gc: None) -> None:
    freeze_startup_objects()
    gc.disable()  # nothing but the timer may collect the cycle below
    try:
        collected = asyncio.Event()
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        weakref.finalize(a, collected.set)
        del a, b
        timer = asyncio.create_task(full_collections(0.01))
        try:
            await asyncio.wait_for(collected.wait(), timeout=10)
        finally:
            await stop_task(timer)
    finally:
        gc.enable()
