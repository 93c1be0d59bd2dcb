"""What the stream hub keeps per job, and the entries it hands its consumers.

A ``JobStream`` is one job's stream as the consumers of a process read it: the ``Waiter`` of
each consumer waiting for entries after its position, and an ``end`` before which every entry
was read or notified. Entries are XREAD's, not decoded. The worker's WRITE script publishes the
entries it appended (``scripts.WRITE``: five lines each); ``notified_entries`` gives them back
as XREAD would. An entry's ``n`` field (its ordinal in the stream, from 1) lets a hand-over
check that no entry was skipped, and a consumer's ``Cursor`` that none was trimmed before it
got there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .errors import StreamGoneError, StreamReadError
from .events import TERMINAL_TYPES
from .keys import Keys

Entry = tuple[bytes, dict[bytes, bytes]]  # an XREAD entry, not decoded: (id, fields)
Position = tuple[int, int]
# a consumer's way to take entries without waking its task (``Hub.tail``'s ``push``): True
# once it wrote them, False (nothing done) when they must go through the task after all
Push = Callable[[list[Entry]], bool]
log = logging.getLogger(__name__)
_TERMINAL = frozenset(t.encode() for t in TERMINAL_TYPES)


def position_of(entry_id: bytes) -> Position:
    """An entry id (``<ms>-<seq>``) as a position, ordered as Redis orders ids."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def stream_id(position: Position) -> str:
    """``position`` as a stream id (``0`` before the first entry)."""
    return f"{position[0]}-{position[1]}" if position > (0, 0) else "0"


def entries_after(entries: list[Entry], first: Position, position: Position) -> list[Entry]:
    """The ``entries`` (in order, the first at ``first``) after ``position``."""
    if first > position:
        return entries
    return [e for e in entries if position_of(e[0]) > position]


def notified_position(data: bytes) -> Position | None:
    """The entry id a script published (``<ms>-<seq>``), or None if it is not one."""
    ms, dash, seq = data.partition(b"-")
    if not (dash and ms.isdigit() and seq.isdigit() and len(ms) <= 20 and len(seq) <= 20):
        return None
    return int(ms), int(seq)


def ordinal(entry: Entry) -> int | None:
    """The entry's ordinal in its stream (``n``), if it has one."""
    raw = entry[1].get(b"n")
    return int(raw) if raw is not None and raw.isdigit() else None


def notified_entries(data: bytes) -> list[Entry] | None:
    """The entries a WRITE script published (five lines each: id, n, t, a, d; see
    ``scripts.WRITE``) as XREAD gives them, or None if ``data`` is not that."""
    lines = data.split(b"\n")
    if len(lines) % 5:
        return None
    return [
        (lines[i], {b"n": lines[i + 1], b"t": lines[i + 2], b"a": lines[i + 3], b"d": lines[i + 4]})
        for i in range(0, len(lines), 5)
    ]


class Cursor:
    """A consumer's place in a job's stream: the ``position`` of the last entry it got, and the
    ordinal (``n``) the next one must carry, if known."""

    __slots__ = ("expected_n", "job_id", "position")

    def __init__(self, job_id: str, position: Position, expected_n: int | None) -> None:
        self.job_id = job_id
        self.position = position
        self.expected_n = expected_n

    @property
    def got(self) -> int | None:
        """The ordinal of the last entry got (0 before the first), if known."""
        return self.expected_n - 1 if self.expected_n is not None else None

    def follows(self, entries: list[Entry]) -> bool:
        """True if ``entries`` are the next ones with no gap (each has the ordinal after the
        one before, the first the one expected) and none ends the job: ``take`` would give
        them all back and not raise."""
        n = self.expected_n
        if n is None:
            return False
        for entry in entries:
            if ordinal(entry) != n or entry[1].get(b"t") in _TERMINAL:
                return False
            n += 1
        return True

    def skip(self, count: int, last: Position) -> None:
        """Move past ``count`` entries that ``follows`` accepted, the last at ``last``: what
        ``take`` would do with them, without parsing them again."""
        assert self.expected_n is not None, "follows() accepts nothing at an unknown ordinal"
        self.expected_n += count
        self.position = last

    def take(self, entries: list[Entry]) -> tuple[list[Entry], bool]:
        """The ``entries`` (the next ones after ``position``) up to and including the job's
        terminal one, and whether it was among them. Raises ``StreamGoneError`` when ordinals
        jump: entries were trimmed (stream cap) before this consumer got them."""
        batch: list[Entry] = []
        for entry in entries:
            raw_n = entry[1].get(b"n")
            if raw_n is not None:
                n = int(raw_n)
                if self.expected_n is not None and n != self.expected_n:
                    raise StreamGoneError(
                        f"job {self.job_id}: events {self.expected_n}..{n - 1} were trimmed "
                        "(stream cap) before this reader got them; it read up to "
                        f"{stream_id(self.position)}"
                    )
                self.expected_n = n + 1
            else:
                self.expected_n = None  # an entry without an ordinal: nothing to check by
            batch.append(entry)
            if entry[1].get(b"t") in _TERMINAL:
                return batch, True
        self.position = position_of(entries[-1][0])
        return batch, False


class Waiter:
    """One consumer waiting for the entries of its stream after its ``cursor``'s position.
    ``push``: the consumer's way to take handed-over entries without waking its task; the
    cursor then moves past them and the waiter stays. A plain class with slots, not a
    dataclass: one is made per wait."""

    __slots__ = ("cursor", "future", "push", "since")

    def __init__(
        self, cursor: Cursor, future: asyncio.Future[list[Entry]], push: Push | None = None
    ) -> None:
        self.cursor = cursor
        self.future = future
        self.push = push
        self.since = time.monotonic()

    @property
    def position(self) -> Position:
        """The position of the last entry the consumer got."""
        return self.cursor.position

    @property
    def n(self) -> int | None:
        """The ordinal of the last entry the consumer got (0 before the first), if known."""
        return self.cursor.got

    def pushed(self, entries: list[Entry], last: Position | None = None) -> bool:
        """Offer ``entries`` to the consumer's ``push`` if they follow its cursor with no gap
        and none ends the job (``Cursor.follows``; any others go through its task). If it
        took them, the cursor moves past them and the waiter waits after them, as if it had
        just started. An error in ``push`` is logged, and the entries go through the task,
        whose send meets it again. ``last``: the position of the last entry, if known."""
        if self.push is None or not self.cursor.follows(entries):
            return False
        try:
            took = self.push(entries)
        except Exception:
            log.exception("stream hub: a consumer's push failed; its task takes the entries")
            self.push = None
            return False
        if took:
            self.cursor.skip(len(entries), last or position_of(entries[-1][0]))
            # not idle: the hub's sweep answers only waits with nothing for half a BLOCK
            self.since = time.monotonic()
        return took


class JobStream:
    """The stream of a job that consumers of this process read, and what is known of its end."""

    __slots__ = ("channel", "consumers", "end", "epoch", "job_id", "job_key", "key", "waiters")

    def __init__(self, job_id: str, keys: Keys) -> None:
        self.job_id = job_id
        self.key = keys.events(job_id).encode()  # as XREAD replies name it
        self.job_key = keys.job(job_id)
        self.channel = keys.written(job_id).encode()  # as pub/sub messages name it
        self.consumers = 0  # tail() generators open on it
        self.waiters: set[Waiter] = set()
        # every entry after ``end`` is still to be notified; None: unknown, read to learn it
        self.end: Position | None = None
        self.epoch = 0  # bumped when ``end`` is forgotten: a read in flight then teaches nothing

    def forget_end(self) -> None:
        self.end, self.epoch = None, self.epoch + 1

    def advance(self, top: Position) -> None:
        """Every entry up to ``top`` was read or notified."""
        if self.end is None or top > self.end:
            self.end = top

    def needs_read(self, position: Position) -> bool:
        return self.end is None or position < self.end

    def fail(self, exc: BaseException) -> None:
        """Answer every waiter with ``exc``."""
        for waiter in self.waiters:
            if not waiter.future.done():
                waiter.future.set_exception(exc)
        self.waiters.clear()

    def refused(self, refused: Exception) -> None:
        """Answer every waiter with ``StreamReadError``: Redis refused to read the stream
        (``refused``, its error reply)."""
        exc = StreamReadError(f"job {self.job_id}: Redis refused to read its events: {refused}")
        exc.__cause__ = refused
        log.error("stream hub: %s", exc)
        self.fail(exc)

    def give(self, entries: list[Entry], read_from: Position) -> None:
        """Answer each waiter with the read ``entries`` (read after ``read_from``) after its
        position. A waiter behind ``read_from`` (it came after the read was sent) gets
        nothing from this read: the entries in between are not in it."""
        if not entries:
            return
        first = position_of(entries[0][0])
        for waiter in list(self.waiters):
            if waiter.future.done() or waiter.position < read_from:
                continue
            mine = entries_after(entries, first, waiter.position)
            if mine:
                waiter.future.set_result(mine)
                self.waiters.discard(waiter)

    def hand_over(
        self, entries: list[Entry], first: Position, last: Position | None = None
    ) -> tuple[int, int]:
        """Give the notified ``entries`` to each waiter they follow with no gap: the first one
        after the waiter's position has the ordinal after the waiter's last (``n`` counts a
        stream's entries from 1, and the waiter knows the ordinal it is at). A waiter whose
        consumer pushes (``Waiter.pushed``) takes them without waking its task and keeps
        waiting; the others' futures get them. Any other waiter (behind, so some entries in
        between were not notified to it, or at an unknown ordinal) is left to a read.
        ``first``, ``last``: the positions of the first and last entry. Returns how many
        entries were handed over, and how many of those were pushed, counting each waiter's."""
        handed = pushed = 0
        for waiter in list(self.waiters):
            if waiter.n is None or waiter.future.done():
                continue
            mine = entries_after(entries, first, waiter.position)  # a read may have got some first
            if mine and ordinal(mine[0]) == waiter.n + 1:
                handed += len(mine)
                if waiter.pushed(mine, last):
                    pushed += len(mine)
                    continue
                waiter.future.set_result(mine)
                self.waiters.discard(waiter)
        return handed, pushed
