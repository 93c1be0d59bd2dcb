"""Garbage collection for processes that hold thousands of open streams.

Each open stream keeps a few hundred tracked objects alive (connection, tasks, generators), so
an API or worker holding 2,000 streams tracks over half a million. CPython starts a full
collection every time ten middle-generation passes went by and the survivors grew by a quarter:
with streams starting and ending all the time that was every 2 s, and each pass walked every
object for ~400 ms, pausing every stream of the process at once (docs/benchmarks.md).

Here the objects left by start-up (imports) are frozen out of collection, and full collections
are decided on a timer instead: every ``gc_full_seconds`` the old generation is counted (a few
ms for half a million objects, against hundreds for a full pass), and a full collection runs if
``MAX_SKIPS`` checks went by without one, or if it holds a quarter more objects than after the
last one and that last one was worth its pause (it found at least ``WORTHWHILE`` of what it
walked to be garbage). Unlike CPython's own rule, which counts every object promoted to the old
generation, this counts the ones still there: a stream that ended and was freed by reference
counts does not count, cyclic garbage does. With 2,000 streams running the old generation stays
level and no full pass pauses them (a full pass every 20 s made the relay p99 585 ms while every
stream ran, against 79 ms with none). Streams end without leaving cycles (``api.streams``), so
the old generation mostly grows with live streams, and a pass then finds nothing: with 2,000
streams open it walks about 600,000 objects in some 600 ms. So growth alone starts a pass only
while passes find garbage; otherwise one runs every ``MAX_SKIPS`` + 1 intervals (10 minutes by
default), which also bounds how long cyclic garbage can pile up unnoticed.

The young generation is collected after ``YOUNG_THRESHOLD`` net allocations rather than
CPython's 700, and the middle one every third young collection rather than every eleventh. A
collection walks every young object still alive, and a process relaying many streams keeps many
short-lived objects alive for a while (per stream: a read's waiter and timeout handle until its
next chunk, a write's arguments until Redis answers). Every 700 allocations caught most of them
alive, so each was walked in the young and again in the middle generation: with 2,000 streams at
5 chunks/s the young and middle collections took 13% of the worker's CPU and 22% of the API's,
and relay p50 was 240-290 ms (the machine is overloaded there). Collected every 20,000, most of
those objects have been freed by their reference counts first: p50 65-74 ms, worker CPU per chunk
~10% lower. The price is longer pauses: up to ~80 ms for a young and ~170 ms for a middle
collection in that scenario (at 50,000 and every eleventh, a middle one took 530-590 ms while
2,000 jobs started). With 500 streams no difference was measured.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

NO_AUTOMATIC_FULL = 1_000_000  # middle-generation passes between automatic full ones
FULL_GROWTH = 0.25  # a full collection once the old generation grew by this fraction
MAX_SKIPS = 9  # checks without a full collection before one runs anyway
YOUNG_THRESHOLD = 20_000  # net allocations between young collections (CPython's default: 700)
MIDDLE_THRESHOLD = 2  # young collections between middle ones, plus one (CPython's default: 10)
WORTHWHILE = 0.01  # a full pass that found less of what it walked to be garbage did not pay


def freeze_startup_objects() -> None:
    """Collect once, then move every surviving object out of the collector's way; collect the
    young generation less often; and leave full collections to :func:`full_collections`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, NO_AUTOMATIC_FULL)


def old_generation_size() -> int:
    """How many objects the old generation holds (frozen ones excluded)."""
    return len(gc.get_objects(generation=2))


class FullCollectionPolicy:
    """When to run a full collection: at a check, if ``max_skips`` checks in a row passed
    without one, or if the old generation holds ``growth`` more objects than after the last
    one and that one paid (it found at least ``worthwhile`` of what it walked to be garbage).
    Until a collection has paid, growth alone does not start one."""

    def __init__(
        self,
        baseline: int,
        growth: float = FULL_GROWTH,
        max_skips: int = MAX_SKIPS,
        worthwhile: float = WORTHWHILE,
    ) -> None:
        self.baseline = baseline
        self.growth = growth
        self.max_skips = max_skips
        self.worthwhile = worthwhile
        self.skipped = 0
        self.paid = False  # whether the last full collection found garbage worth its pause

    def due(self, size: int) -> bool:
        """A check with the old generation at ``size`` objects: collect now?"""
        grew = size >= self.baseline * (1 + self.growth)
        if self.skipped >= self.max_skips or (grew and self.paid):
            return True
        self.skipped += 1
        return False

    def collected(self, size: int, found: int) -> None:
        """A full collection found ``found`` unreachable objects and left ``size`` in the old
        generation."""
        self.baseline, self.skipped = size, 0
        self.paid = found >= self.worthwhile * (size + found)


async def full_collections(every: float) -> None:
    """Every ``every`` seconds, a full collection if :class:`FullCollectionPolicy` says so
    (a background task)."""
    policy = FullCollectionPolicy(old_generation_size())
    while True:
        await asyncio.sleep(every)
        # counting the old generation lists it (~15 ms for 600,000 objects): only when growth
        # can start a collection
        if not policy.due(old_generation_size() if policy.paid else policy.baseline):
            continue
        started = time.perf_counter()
        found = gc.collect()
        policy.collected(old_generation_size(), found)
        log.debug(
            "full gc: %d unreachable objects, %.1f ms, %d objects left in the old generation",
            found,
            (time.perf_counter() - started) * 1e3,
            policy.baseline,
        )
