"""``after`` / ``Last-Event-ID`` values are validated before they reach XREAD."""

from __future__ import annotations

import pytest

from tokenspool.errors import InvalidEventIdError, TokenspoolError
from tokenspool.tailer import parse_event_id


@pytest.mark.parametrize("value", [None, "", "   "])
def test_parse_event_id_treats_missing_value_as_the_start(value: str | None) -> None:
    assert parse_event_id(value) == "0"


@pytest.mark.parametrize("value", ["0", "0-0", " 0-0 "])
def test_parse_event_id_normalises_zero_ids_to_the_start(value: str) -> None:
    assert parse_event_id(value) == "0"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1700000000000-5", "1700000000000-5"),
        ("1-0", "1-0"),
        (" 1700000000000-0\n", "1700000000000-0"),
    ],
)
def test_parse_event_id_accepts_stream_entry_ids(value: str, expected: str) -> None:
    assert parse_event_id(value) == expected


@pytest.mark.parametrize(
    "value",
    ["abc", "$", "1-2-3", "-1", " 12-x", "1700000000000", "1-", "-", "+", "1 -2", "1-2\n3"],
)
def test_parse_event_id_rejects_what_is_not_a_stream_id(value: str) -> None:
    with pytest.raises(InvalidEventIdError) as info:
        parse_event_id(value)

    assert repr(value.strip()) in str(info.value)
    assert info.value.value == value.strip()


def test_invalid_event_id_error_is_a_value_error_and_a_tokenspool_error() -> None:
    with pytest.raises(ValueError, match=r"invalid event id 'abc'") as info:
        parse_event_id("abc")

    assert isinstance(info.value, TokenspoolError)
