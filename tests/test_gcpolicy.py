"""The garbage-collection policy of the API and worker processes (tokenspool/gcpolicy.py)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from tokenspool.gcpolicy import (
    NO_AUTOMATIC_FULL,
    NO_AUTOMATIC_MIDDLE,
    YOUNG_THRESHOLD,
    FullCollectionPolicy,
    freeze_startup_objects,
    full_collections,
    survivors,
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
    assert gc.get_threshold() == (YOUNG_THRESHOLD, NO_AUTOMATIC_MIDDLE, NO_AUTOMATIC_FULL)


def test_young_collections_never_start_an_older_one(restore_gc: None) -> None:
    freeze_startup_objects()
    generations: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            generations.append(info["generation"])

    gc.callbacks.append(record)
    try:
        kept = [[] for _ in range(YOUNG_THRESHOLD * 8)]  # net allocations: ~8 young passes
    finally:
        gc.callbacks.remove(record)

    assert generations.count(0) >= 5
    assert set(generations) == {0}
    assert len(kept) == YOUNG_THRESHOLD * 8


def test_cyclic_garbage_that_outlived_a_young_collection_is_counted_until_a_full_one(
    restore_gc: None,
) -> None:
    freeze_startup_objects()
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.finalize(a, lambda: None)
    gc.collect(0)  # still referenced: it survives, out of the young generation
    del a, b
    before = survivors()
    gc.collect(0)
    gc.collect(0)

    assert gone.alive  # no young collection walks it again
    assert survivors() == before
    gc.collect()
    assert not gone.alive
    assert survivors() < before


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


def test_growth_starts_a_full_collection_only_after_one_that_found_garbage() -> None:
    policy = FullCollectionPolicy(baseline=1000, growth=0.25, max_skips=5, worthwhile=0.01)
    assert not policy.due(2000)  # no collection has paid yet: growth alone waits
    policy.collected(1000, found=100)  # a tenth of what it walked was garbage
    assert [policy.due(size) for size in (1000, 1100, 1249)] == [False, False, False]
    assert policy.due(1250)  # a quarter more than after the last collection
    policy.collected(1100, found=50)  # what is left is the new baseline
    assert not policy.due(1300)
    assert policy.due(1375)


def test_a_full_collection_that_found_little_is_not_repeated_for_growth() -> None:
    policy = FullCollectionPolicy(baseline=1000, growth=0.25, max_skips=3, worthwhile=0.01)
    policy.collected(1000, found=9)  # under 1% of the 1,009 objects it walked
    assert [policy.due(5000) for _ in range(4)] == [False, False, False, True]


def test_a_full_collection_runs_anyway_after_max_skips_checks_without_one() -> None:
    policy = FullCollectionPolicy(baseline=1000, growth=0.25, max_skips=3)
    assert [policy.due(1000) for _ in range(4)] == [False, False, False, True]
    policy.collected(1000, found=0)
    assert [policy.due(900) for _ in range(4)] == [False, False, False, True]
