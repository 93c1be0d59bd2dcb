"""The bench's CPU timeline: cores busy over a window known only after the run."""

from __future__ import annotations

import asyncio
import os

import pytest

from bench.procstat import CpuTimeline


def _timeline() -> CpuTimeline:
    timeline = CpuTimeline({"api": 1, "worker 1": 2})
    # t, CPU seconds by process, machine busy seconds: the API 0.5 cores, the worker 1 core
    # and the machine 1.8 cores busy from t=10 to t=14; all idle before and after
    for at, api, worker, machine in [
        (8.0, 3.0, 5.0, 100.0),
        (10.0, 3.0, 5.0, 100.0),
        (12.0, 4.0, 7.0, 103.6),
        (14.0, 5.0, 9.0, 107.2),
        (16.0, 5.0, 9.0, 107.2),
    ]:
        timeline.add(at, {"api": api, "worker 1": worker}, machine)
    return timeline


def test_cores_over_a_window_count_only_the_samples_inside_it() -> None:
    cores = _timeline().cores(9.5, 14.5)
    assert cores == pytest.approx({"api": 0.5, "worker 1": 1.0, "machine": 1.8})


def test_cores_over_the_whole_run_average_in_the_idle_stretches() -> None:
    cores = _timeline().cores(0.0, 20.0)
    assert cores == pytest.approx({"api": 0.25, "worker 1": 0.5, "machine": 0.9})


def test_cpu_used_counts_from_the_first_sample_to_the_last() -> None:
    assert _timeline().used() == pytest.approx({"api": 2.0, "worker 1": 4.0})


def test_a_window_with_too_few_samples_has_no_figure() -> None:
    timeline = _timeline()
    assert timeline.cores(10.5, 13.0) == {}  # one sample inside
    assert timeline.cores(9.5, 12.5, shortest=3.0) == {}  # two, 2 s apart


class _Counted(CpuTimeline):
    def __init__(self, pids: dict[str, int], every: float, wanted: int) -> None:
        super().__init__(pids, every)
        self.wanted = wanted
        self.enough = asyncio.Event()

    def add(self, at: float, cpu: dict[str, float], machine: float) -> None:
        super().add(at, cpu, machine)
        if len(self.samples) >= self.wanted:
            self.enough.set()


async def test_the_timeline_samples_live_processes_until_it_is_left() -> None:
    timeline = _Counted({"me": os.getpid()}, every=0.01, wanted=4)
    async with timeline:
        await asyncio.wait_for(timeline.enough.wait(), timeout=10)
    count = len(timeline.samples)
    await asyncio.sleep(0.05)
    assert len(timeline.samples) == count  # the sampling task stopped with the block
    stamps = [at for at, _, _ in timeline.samples]
    assert stamps == sorted(stamps)
    assert all(set(cpu) == {"me"} for _, cpu, _ in timeline.samples)
    busy = [machine for _, _, machine in timeline.samples]
    assert busy == sorted(busy) and busy[-1] > 0
