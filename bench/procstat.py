"""CPU time and memory of processes, read from /proc (Linux)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

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


class PeakRss:
    """Samples the resident memory of some processes every 0.25 s; keeps each one's peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak_kb = dict.fromkeys(pids, 0)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PeakRss:
        self._sample()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_task(self._task)
        self._sample()

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            self.peak_kb[name] = max(self.peak_kb[name], status_kb(pid, "VmRSS"))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self._sample()
