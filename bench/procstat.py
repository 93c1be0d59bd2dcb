"""CPU time and memory of processes, read from /proc (Linux)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Self

from tokenspool.tasks import stop_task

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (utime + stime of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # the command name may hold spaces: fields start after the last ')'
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status, e.g. ``VmRSS`` or ``VmHWM``."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class CpuMeter:
    """CPU seconds of named processes between ``start()`` and ``stop()``."""

    pids: dict[str, int]

    def start(self) -> None:
        self._before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) - self._before[name] for name, pid in self.pids.items()}


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores; steal counts as busy)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS


def own_seconds() -> float:
    """CPU seconds of this process and its children, live ones and reaped ones."""
    me = os.getpid()
    with open(f"/proc/{me}/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rindex(b")") + 2 :].split()
    total = sum(int(v) for v in fields[11:15]) / TICKS  # utime, stime, cutime, cstime
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue  # exited meanwhile
        fields = raw[raw.rindex(b")") + 2 :].split()
        if int(fields[1]) == me:  # ppid: one of the stack's processes
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


@dataclass
class OtherLoad:
    """Cores kept busy by processes outside this benchmark (other users of the machine)."""

    def start(self) -> None:
        self._t = time.monotonic()
        self._busy, self._own = machine_busy_seconds(), own_seconds()

    def stop(self) -> float:
        busy = machine_busy_seconds() - self._busy
        own = own_seconds() - self._own
        return max(0.0, busy - own) / (time.monotonic() - self._t)


class _Sampler:
    """Calls ``sample()`` on entering, every ``every`` seconds meanwhile, and on leaving."""

    every = 0.25
    _task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self.sample()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_task(self._task)
        self.sample()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            self.sample()


class CpuTimeline(_Sampler):
    """CPU seconds of named processes and of the whole machine, sampled every ``every``
    seconds (wall-clock stamps, as the clocked provider's), so the cores busy over a window
    known only afterwards (while every stream ran) can be told apart from the level's
    average, which includes the ramp."""

    def __init__(self, pids: dict[str, int], every: float = 0.25) -> None:
        self.pids = pids
        self.every = every
        self.samples: list[tuple[float, dict[str, float], float]] = []

    def sample(self) -> None:
        cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.add(time.time(), cpu, machine_busy_seconds())

    def add(self, at: float, cpu: dict[str, float], machine: float) -> None:
        self.samples.append((at, cpu, machine))

    def used(self) -> dict[str, float]:
        """CPU seconds of each process from the first sample to the last."""
        (_, first, _), (_, last, _) = self.samples[0], self.samples[-1]
        return {name: last[name] - first[name] for name in first}

    def cores(self, lo: float, hi: float, shortest: float = 1.0) -> dict[str, float]:
        """Cores busy (1.0 = one core) by process, and ``"machine"`` for the whole machine,
        between the first sample at or after ``lo`` and the last at or before ``hi``; empty
        if those samples span less than ``shortest`` seconds."""
        inside = [s for s in self.samples if lo <= s[0] <= hi]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < shortest:
            return {}
        (t0, cpu0, busy0), (t1, cpu1, busy1) = inside[0], inside[-1]
        span = t1 - t0
        cores = {name: (cpu1[name] - cpu0[name]) / span for name in cpu0 if name in cpu1}
        cores["machine"] = (busy1 - busy0) / span
        return cores


class PeakRss(_Sampler):
    """Samples the resident memory of some processes every 0.25 s; keeps each one's peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak_kb = dict.fromkeys(pids, 0)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.peak_kb[name] = max(self.peak_kb[name], status_kb(pid, "VmRSS"))
