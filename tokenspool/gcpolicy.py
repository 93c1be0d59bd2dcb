"""Garbage collection for processes that hold thousands of open streams.

Each open stream keeps a few hundred tracked objects alive (connection, tasks, generators), so
an API or worker holding 2,000 streams tracks over half a million. CPython starts a full
collection every time ten middle-generation passes went by and the survivors grew by a quarter:
with streams starting and ending all the time that was every 2 s, and each pass walked every
object for ~400 ms, pausing every stream of the process at once (docs/benchmarks.md).

Here the objects left by start-up (imports) are frozen out of collection, the young and middle
generations keep CPython's defaults (they catch the short-lived cycles and cost ~1-7 ms), and
full collections run on a timer instead, every ``gc_full_seconds``: the cyclic garbage that
reaches the old generation is collected within that bound.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

NO_AUTOMATIC_FULL = 1_000_000  # middle-generation passes between automatic full ones


def freeze_startup_objects() -> None:
    """Collect once, then move every surviving object out of the collector's way; and leave
    full collections to :func:`full_collections`."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NO_AUTOMATIC_FULL)


async def full_collections(every: float) -> None:
    """Run a full collection every ``every`` seconds (a background task)."""
    while True:
        await asyncio.sleep(every)
        started = time.perf_counter()
        found = gc.collect()
        log.debug(
            "full gc: %d unreachable objects, %.1f ms", found, (time.perf_counter() - started) * 1e3
        )
