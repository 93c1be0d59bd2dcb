"""Leases on running attempts: renewed by their worker, taken over by another when they lapse.

Each running attempt holds ``lease_until`` on its job hash (Redis server time). One keeper task
per worker process renews all of its attempts in one pipelined round trip every
``lease_renew_seconds``; an attempt whose renewal is refused (another worker took the job
over) is told through its ``lost`` event and stops its provider stream. A reaper task per
process looks for running jobs whose lease deadline passed and starts their next attempt,
except the ones its own keeper holds: those belong to a process that is alive (it is reaping)
but renewed late, as an overloaded event loop does, so they are renewed instead of restarted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .store import JobStore
from .tasks import every, stop_task

log = logging.getLogger(__name__)

RENEW_SLICE = 200  # leases renewed per round trip


class LeaseKeeper:
    """Renews this process's leases; flags the ones it lost."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._held: dict[str, tuple[int, asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None

    def hold(self, job_id: str, attempt: int) -> asyncio.Event:
        lost = asyncio.Event()
        self._held[job_id] = (attempt, lost)
        return lost

    def drop(self, job_id: str) -> None:
        self._held.pop(job_id, None)

    def holds(self, job_id: str) -> bool:
        """Whether an attempt of this process runs ``job_id``."""
        return job_id in self._held

    @property
    def count(self) -> int:
        return len(self._held)

    def start(self) -> None:
        self._task = asyncio.create_task(
            every(self.store.settings.lease_renew_seconds, self.renew_now, "lease renewal"),
            name="lease-keeper",
        )

    async def stop(self) -> None:
        await stop_task(self._task)

    async def renew_now(self) -> None:
        """Renew every held lease, ``RENEW_SLICE`` per round trip, one round trip after the
        other: Redis runs a pipeline's scripts back to back, so 2,000 leases of running jobs in
        one round trip kept it from every other client (the worker's writes, the API's
        notifications) for 12.3 ms (INFO commandstats), and the worker's loop from its streams
        while it packed and read them."""
        held = dict(self._held)
        leases = [(job_id, attempt) for job_id, (attempt, _) in held.items()]
        for at in range(0, len(leases), RENEW_SLICE):
            results = await self.store.renew(dict(leases[at : at + RENEW_SLICE]))
            for job_id, owned in results.items():
                if not owned and job_id in self._held and self._held[job_id][0] == held[job_id][0]:
                    log.warning("job %s: lease of attempt %d lost", job_id, held[job_id][0])
                    self._held[job_id][1].set()


class Reaper:
    """Starts the next attempt of running jobs whose worker stopped renewing their lease."""

    def __init__(
        self,
        store: JobStore,
        capacity: Callable[[], int],
        take_over: Callable[[str], Awaitable[None]],
        keeper: LeaseKeeper | None = None,
    ) -> None:
        self.store = store
        self.capacity = capacity
        self.take_over = take_over
        self.keeper = keeper  # this process's leases: renewed, never taken over
        self._task: asyncio.Task[None] | None = None
        self.accepting = True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lease-reaper")

    async def stop(self) -> None:
        self.accepting = False
        await stop_task(self._task)

    async def reap_once(self) -> int:
        free = self.capacity()
        if free <= 0 or not self.accepting:
            return 0
        taken = 0
        late = False
        for job_id in await self.store.expired(free):
            if self.keeper is not None and self.keeper.holds(job_id):
                late = True  # our own attempt runs it: restarting it would only repeat it
                continue
            await self.take_over(job_id)
            taken += 1
        if late and self.keeper is not None:
            log.warning("leases of running attempts lapsed before their renewal; renewing now")
            await self.keeper.renew_now()
        return taken

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.store.settings.reap_interval_seconds)
            try:
                await self.reap_once()
            except Exception:  # supervising loop: log and keep reaping
                log.exception("reaper pass failed")
