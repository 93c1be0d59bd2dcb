"""What the stream hub keeps per job: hand-overs from notifications and reads to waiters."""

from __future__ import annotations

import asyncio

import pytest

from tokenspool.errors import StreamGoneError
from tokenspool.keys import Keys
from tokenspool.waits import (
    Cursor,
    Entry,
    JobStream,
    Waiter,
    notified_entries,
    notified_position,
    position_of,
)


def _entry(ms: int, n: int) -> Entry:
    return (f"{ms}-0".encode(), {b"n": str(n).encode(), b"t": b"content.delta"})


def _cursor(ms: int, n: int | None) -> Cursor:
    """A consumer's cursor after the entry at ``ms`` whose ordinal is ``n`` (if known)."""
    return Cursor("job", (ms, 0), None if n is None else n + 1)


async def _waiting(stream: JobStream, ms: int, n: int | None) -> Waiter:
    waiter = Waiter(_cursor(ms, n), asyncio.get_running_loop().create_future())
    stream.waiters.add(waiter)
    return waiter


def test_notified_entries_come_back_as_xread_gives_them() -> None:
    data = b"\n".join([b"5-0", b"3", b"content.delta", b"1", b"{}", b"6-0", b"4", b"x", b"1", b""])
    assert notified_entries(data) == [
        (b"5-0", {b"n": b"3", b"t": b"content.delta", b"a": b"1", b"d": b"{}"}),
        (b"6-0", {b"n": b"4", b"t": b"x", b"a": b"1", b"d": b""}),
    ]
    assert notified_entries(b"5-0\n3\nx") is None  # not five lines per entry
    assert notified_position(b"12-3") == (12, 3) == position_of(b"12-3")
    assert notified_position(b"hello") is None


async def test_a_hand_over_goes_only_to_waiters_the_entries_follow_with_no_gap() -> None:
    stream = JobStream("job", Keys())
    caught_up = await _waiting(stream, 20, 2)  # has entries 1 and 2
    behind = await _waiting(stream, 10, 1)  # missed entry 2, which was not notified to it
    unknown = await _waiting(stream, 20, None)  # ordinal unknown: cannot check for a gap
    entries = [_entry(30, 3), _entry(40, 4)]

    handed, pushed = stream.hand_over(entries, (30, 0))

    assert (handed, pushed) == (2, 0)
    assert caught_up.future.result() == entries
    assert not behind.future.done() and not unknown.future.done()
    assert stream.waiters == {behind, unknown}  # left for a read


async def test_a_read_gives_each_waiter_the_entries_after_its_position() -> None:
    stream = JobStream("job", Keys())
    at_start = await _waiting(stream, 20, None)
    further = await _waiting(stream, 30, None)
    newer = await _waiting(stream, 40, None)  # nothing in the read is after it
    early = await _waiting(stream, 10, None)  # behind where the stream was read from
    entries = [_entry(30, 3), _entry(40, 4)]

    stream.give(entries, read_from=(20, 0))

    assert at_start.future.result() == entries
    assert further.future.result() == entries[1:]
    assert not newer.future.done() and not early.future.done()
    assert stream.waiters == {newer, early}


async def test_failing_a_stream_answers_and_forgets_every_waiter() -> None:
    stream = JobStream("job", Keys())
    waiters = [await _waiting(stream, ms, None) for ms in (10, 20)]
    stream.fail(RuntimeError("gone"))
    assert all(isinstance(w.future.exception(), RuntimeError) for w in waiters)
    assert not stream.waiters


def test_a_cursor_takes_entries_up_to_the_terminal_one_and_moves_past_the_rest() -> None:
    cursor = Cursor("job", (0, 0), 1)
    first = [_entry(10, 1), _entry(20, 2)]
    assert cursor.take(first) == (first, False)
    assert (cursor.position, cursor.got) == ((20, 0), 2)
    done = (b"40-0", {b"n": b"4", b"t": b"job.completed"})
    assert cursor.take([_entry(30, 3), done, _entry(50, 5)]) == ([_entry(30, 3), done], True)


def test_a_cursor_refuses_entries_whose_ordinals_jump() -> None:
    cursor = Cursor("job", (20, 0), 3)
    with pytest.raises(StreamGoneError, match=r"events 3\.\.4 were trimmed.*read up to 20-0"):
        cursor.take([_entry(50, 5)])


async def test_a_waiter_pushes_only_the_next_entries_with_no_gap_never_the_terminal() -> None:
    cursor = Cursor("job", (20, 0), 3)  # got entries 1 and 2
    offered: list[list[Entry]] = []

    def push(entries: list[Entry]) -> bool:
        offered.append(entries)
        return True

    loop = asyncio.get_running_loop()
    pushed = Waiter(cursor, loop.create_future(), push).pushed
    terminal = (b"40-0", {b"n": b"4", b"t": b"job.completed"})

    assert not pushed([_entry(40, 4)])  # entry 3 missing
    assert not pushed([_entry(30, 3), _entry(40, 5)])  # a gap inside
    assert not pushed([_entry(30, 3), terminal])  # the end goes through the task
    assert offered == []  # none of those was offered
    assert pushed([_entry(30, 3), _entry(40, 4)])
    assert offered == [[_entry(30, 3), _entry(40, 4)]]
    assert (cursor.position, cursor.got) == ((40, 0), 4)  # taken: the cursor moved past them

    declining = Waiter(cursor, loop.create_future(), lambda entries: False)
    assert not declining.pushed([_entry(50, 5)])  # declined
    assert (cursor.position, cursor.got) == ((40, 0), 4)  # nothing taken


async def test_a_push_that_declines_or_fails_leaves_the_hand_over_to_the_waiters_future(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = JobStream("job", Keys())
    loop = asyncio.get_running_loop()

    def failing(entries: list[Entry]) -> bool:
        raise RuntimeError("client gone")

    taking = Waiter(_cursor(20, 2), loop.create_future(), push=lambda entries: True)
    declining = Waiter(_cursor(20, 2), loop.create_future(), push=lambda entries: False)
    broken = Waiter(_cursor(20, 2), loop.create_future(), push=failing)
    stream.waiters.update((taking, declining, broken))
    taking.since = 0.0  # as if it had waited long: a push makes it recent again

    assert stream.hand_over([_entry(30, 3)], (30, 0)) == (3, 1)

    assert not taking.future.done() and taking in stream.waiters  # still waiting, after it
    assert (taking.position, taking.n) == ((30, 0), 3)
    assert taking.since > 0.0  # the hub's sweep does not answer it as idle
    for waiter in (declining, broken):
        assert waiter.future.result() == [_entry(30, 3)] and waiter not in stream.waiters
    assert "push failed" in caplog.text and "client gone" in caplog.text

    assert stream.hand_over([_entry(40, 4)], (40, 0)) == (1, 1)  # the next one, pushed too
    assert (taking.position, taking.n) == ((40, 0), 4)
    # the hub passes the last position it parsed from the notification: the same move
    assert stream.hand_over([_entry(50, 5), _entry(60, 6)], (50, 0), (60, 0)) == (2, 2)
    assert (taking.position, taking.n) == ((60, 0), 6)
