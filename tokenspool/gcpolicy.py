"""Garbage collection for processes that hold thousands of open streams.

Each open stream keeps a few hundred tracked objects alive (connection, tasks, generators), so
an API or worker holding 2,000 streams tracks over half a million. CPython starts a full
collection every time ten middle-generation passes went by and the survivors grew by a quarter:
with streams starting and ending all the time that was every 2 s, and each pass walked every
object for ~400 ms, pausing every stream of the process at once (docs/benchmarks.md).

Here the objects left by start-up (imports) are frozen out of collection, CPython collects only
the young generation, and every older collection is a full one decided on a timer: every
``gc_full_seconds`` the objects that survived a young collection are counted (a few ms for half
a million objects, against hundreds for a full pass), and a full collection runs if
``MAX_SKIPS`` checks went by without one, or if they are a quarter more than after the last one
and that last one was worth its pause (it found at least ``WORTHWHILE`` of what it walked to be
garbage). Unlike CPython's own rule, which counts every object promoted to the old generation,
this counts the ones still there: a stream that ended and was freed by reference counts does not
count, cyclic garbage does. With 2,000 streams running that count stays level and no full pass
pauses them (a full pass every 20 s made the relay p99 585 ms while every stream ran, against
79 ms with none). Streams end without leaving cycles (``api.streams``), so the count mostly
grows with live streams, and a pass then finds nothing: with 2,000 streams open it walks about
600,000 objects in some 600 ms. So growth alone starts a pass only while passes find garbage;
otherwise one runs every ``MAX_SKIPS`` + 1 intervals (10 minutes by default), which also bounds
how long cyclic garbage can pile up unnoticed.

The young generation is collected after ``YOUNG_THRESHOLD`` net allocations rather than
CPython's 700. A collection walks every young object still alive, and a process relaying many
streams keeps many short-lived objects alive for a while (per stream: a read's waiter and
timeout handle until its next chunk, a write's arguments until Redis answers). Every 700
allocations caught most of them alive: with 2,000 streams at 5 chunks/s the young and middle
collections took 13% of the worker's CPU and 22% of the API's, and relay p50 was 240-290 ms
(the machine is overloaded there). Collected every 20,000, most of those objects have been freed
by their reference counts first: p50 65-74 ms, worker CPU per chunk ~10% lower. The price is
longer pauses, up to ~30 ms for a young collection while many jobs start.

There are no automatic middle collections (``NO_AUTOMATIC_MIDDLE``): what survives a young
collection stays in the middle generation until a full one. While jobs start, most survivors are
the new streams' own objects, alive for the stream's life, and a middle collection (every third
young one, before) walked each of them again for nothing: with 1,000 streams starting, the
middle passes paused the API and the worker 60-80 ms each, two or three times per burst, for a
third to half of their collection time. Cyclic garbage that outlives a young collection now
waits for a full one, at most ``MAX_SKIPS`` + 1 intervals, or until it grows the count by a
quarter once passes find garbage.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

NO_AUTOMATIC_FULL = 1_000_000  # middle-generation passes between automatic full ones
FULL_GROWTH = 0.25  # a full collection once the survivors grew by this fraction
MAX_SKIPS = 9  # checks without a full collection before one runs anyway
YOUNG_THRESHOLD = 20_000  # net allocations between young collections (CPython's default: 700)
NO_AUTOMATIC_MIDDLE = 1_000_000  # young collections between middle ones (CPython's default: 10)
WORTHWHILE = 0.01  # a full pass that found less of what it walked to be garbage did not pay


def freeze_startup_objects() -> None:
    """Collect once, then move every surviving object out of the collector's way; collect the
    young generation less often; and leave every older collection to :func:`full_collections`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, NO_AUTOMATIC_MIDDLE, NO_AUTOMATIC_FULL)


def survivors() -> int:
    """How many objects survived a young collection (the middle and old generations; frozen
    ones excluded)."""
    return len(gc.get_objects(generation=1)) + len(gc.get_objects(generation=2))


class FullCollectionPolicy:
    """When to run a full collection: at a check, if ``max_skips`` checks in a row passed
    without one, or if ``growth`` more objects survive young collections than after the last
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
        """A check with ``size`` objects surviving young collections: collect now?"""
        grew = size >= self.baseline * (1 + self.growth)
        if self.skipped >= self.max_skips or (grew and self.paid):
            return True
        self.skipped += 1
        return False

    def collected(self, size: int, found: int) -> None:
        """A full collection found ``found`` unreachable objects and left ``size``."""
        self.baseline, self.skipped = size, 0
        self.paid = found >= self.worthwhile * (size + found)


async def full_collections(every: float) -> None:
    """Every ``every`` seconds, a full collection if :class:`FullCollectionPolicy` says so
    (a background task)."""
    policy = FullCollectionPolicy(survivors())
    while True:
        await asyncio.sleep(every)
        # counting the survivors lists them (~15 ms for 600,000 objects): only when growth can
        # start a collection
        if not policy.due(survivors() if policy.paid else policy.baseline):
            continue
        started = time.perf_counter()
        found = gc.collect()
        policy.collected(survivors(), found)
        log.debug(
            "full gc: %d unreachable objects, %.1f ms, %d objects left",
            found,
            (time.perf_counter() - started) * 1e3,
            policy.baseline,
        )
