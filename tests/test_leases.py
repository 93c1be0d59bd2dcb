"""Lease renewal against the real (embedded) Redis: what a renewal answers for an attempt that
still runs, one that another attempt replaced, and one that ended the job meanwhile."""

from __future__ import annotations

from arq.connections import ArqRedis

from tokenspool.events import JobCompleted
from tokenspool.jobs import JobRequest, new_job_id
from tokenspool.leases import RENEW_SLICE, LeaseKeeper, Reaper
from tokenspool.settings import Settings
from tokenspool.store import JobStore


async def _running(store: JobStore) -> str:
    job_id = new_job_id()
    request = JobRequest.model_validate(
        {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}
    )
    await store.create(job_id, request)
    assert (await store.start(job_id, "test-worker")).status == "started"
    return job_id


async def _in_running_set(store: JobStore, job_id: str) -> bool:
    return await store.redis.zscore(store.keys.running, job_id) is not None


async def test_renewal_keeps_a_running_attempt_and_reports_a_replaced_one(
    store: JobStore,
) -> None:
    job_id = await _running(store)
    assert await store.renew({job_id: 1}) == {job_id: True}
    await store.release(job_id, 1)
    assert (await store.start(job_id, "other-worker", owner_attempt=1)).attempt == 2
    assert await store.renew({job_id: 1}) == {job_id: False}
    assert await store.renew({job_id: 2}) == {job_id: True}


async def test_renewal_that_crosses_the_terminal_write_is_not_a_lost_lease(
    store: JobStore,
) -> None:
    job_id = await _running(store)
    done = JobCompleted(job_id=job_id, attempt=1, finish_reason="stop").to_fields()
    await store.write(job_id, 1, [(done["t"], done["d"])], 1, "completed", {})
    await store.forget_running(job_id)
    # the keeper's snapshot still held the attempt when the job ended
    assert await store.renew({job_id: 1}) == {job_id: True}
    assert not await _in_running_set(store, job_id)  # the reaper will not look at it again


async def test_renewal_after_redis_lost_its_scripts_loads_the_script_again(
    store: JobStore,
) -> None:
    job_id = await _running(store)
    await store.redis.script_flush()
    assert await store.renew({job_id: 1}) == {job_id: True}
    assert await store.renew({job_id: 2}) == {job_id: False}


async def test_a_lapsed_lease_of_this_processs_own_attempt_is_renewed_not_taken_over(
    redis: ArqRedis, settings: Settings
) -> None:
    # a key prefix of its own: the stack's workers never reap this job
    store = JobStore(redis, settings.model_copy(update={"key_prefix": f"reap-{new_job_id()}"}))
    mine, orphan = await _running(store), await _running(store)
    keeper = LeaseKeeper(store)
    keeper.hold(mine, 1)
    for job_id in (mine, orphan):
        await store.release(job_id, 1)  # both leases lapsed, as after a long stall
    taken: list[str] = []

    async def take_over(job_id: str) -> None:
        taken.append(job_id)

    reaper = Reaper(store, lambda: 10, take_over, keeper)
    assert await reaper.reap_once() == 1

    assert taken == [orphan]  # the job no attempt here runs is taken over
    assert await store.expired(10) == [orphan]  # ours was renewed, and is not expired
    assert await store.renew({mine: 1}) == {mine: True}


async def test_a_keeper_holding_more_leases_than_one_round_trip_renews_every_one(
    redis: ArqRedis, settings: Settings
) -> None:
    store = JobStore(redis, settings.model_copy(update={"key_prefix": f"many-{new_job_id()}"}))
    jobs = [await _running(store) for _ in range(RENEW_SLICE * 2 + 1)]
    replaced = jobs[RENEW_SLICE + 3]  # in the second round trip
    keeper = LeaseKeeper(store)
    lost = {job_id: keeper.hold(job_id, 1) for job_id in jobs}
    for job_id in jobs:
        await store.release(job_id, 1)  # every lease lapsed
    await store.release(replaced, 1)
    assert (await store.start(replaced, "other-worker", owner_attempt=1)).attempt == 2

    await keeper.renew_now()

    assert [job_id for job_id, event in lost.items() if event.is_set()] == [replaced]
    assert await store.expired(len(jobs)) == []  # each one of this keeper's was renewed
