"""What the fake provider sends is a pure function of the request: directives and plans."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenspool import fake_llm
from tokenspool.fake_llm import MAX_CHUNKS, TOOL_ARGUMENTS, WORDS, parse_directives, plan

EXAMPLES = settings(max_examples=100, deadline=None)

WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}


def make_body(prompt: str = "hello there", model: str = "fake-gpt", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


# ---------------------------------------------------------------- parse_directives


def test_parse_directives_without_a_directive_is_empty() -> None:
    assert parse_directives("just a question") == {}
    assert parse_directives("[fakeish] [other chunks=3]") == {}


def test_parse_directives_reads_integer_values_inside_text() -> None:
    text = "Tell me a story [fake chunks=50 delay_ms=10 status=429 fail_times=2] please"

    assert parse_directives(text) == {
        "chunks": 50,
        "delay_ms": 10,
        "status": 429,
        "fail_times": 2,
    }


def test_parse_directives_ignores_tokens_without_integer_values() -> None:
    assert parse_directives("[fake chunks=abc flag drop_after= stall_after=3 x=1.5]") == {
        "stall_after": 3
    }


def test_parse_directives_accepts_negative_integers() -> None:
    assert parse_directives("[fake chunks=-4]") == {"chunks": -4}


def test_parse_directives_reads_only_the_first_directive() -> None:
    assert parse_directives("[fake chunks=1] [fake chunks=2 delay_ms=5]") == {"chunks": 1}


@EXAMPLES
@given(
    st.dictionaries(st.from_regex(r"[a-z_]{1,10}", fullmatch=True), st.integers(-(10**6), 10**6)),
    st.text(alphabet=st.characters(exclude_characters="[]"), max_size=20),
    st.text(alphabet=st.characters(exclude_characters="[]"), max_size=20),
)
def test_parse_directives_round_trips_any_directive_in_any_text(
    directives: dict[str, int], before: str, after: str
) -> None:
    tokens = " ".join(f"{key}={value}" for key, value in directives.items())

    assert parse_directives(f"{before}[fake {tokens}]{after}") == directives


# ---------------------------------------------------------------- plan


def test_plan_defaults_to_24_content_chunks_and_no_reasoning() -> None:
    p = plan(make_body())

    assert len(p.content) == 24
    assert p.reasoning == ()
    assert p.tool_call is None
    assert p.finish_reason == "stop"
    assert (p.delay_s, p.ttft_s) == (0.0, 0.0)
    assert (p.status, p.fail_times, p.drop_after, p.stall_after) == (None, None, None, None)


def test_plan_chunks_are_words_joined_by_single_spaces() -> None:
    p = plan(make_body("[fake chunks=5]"))

    assert p.content == (*(f"{w} " for w in WORDS[:4]), WORDS[4])
    assert p.text == " ".join(WORDS[:5])


def test_plan_words_wrap_around_past_the_vocabulary() -> None:
    n = len(WORDS) + 2

    p = plan(make_body(f"[fake chunks={n}]"))

    assert p.text.split() == [*WORDS, *WORDS[:2]]


@pytest.mark.parametrize("n", [0, -3])
def test_plan_without_positive_chunks_sends_no_content(n: int) -> None:
    assert plan(make_body(f"[fake chunks={n}]")).content == ()


def test_plan_caps_chunks_at_max_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_llm, "MAX_CHUNKS", 10)

    assert len(plan(make_body("[fake chunks=1000]")).content) == 10
    assert MAX_CHUNKS == 1_000_000


def test_plan_reads_timing_and_fault_directives() -> None:
    prompt = "[fake delay_ms=25 ttft_ms=300 status=503 fail_times=2 drop_after=4 stall_after=6]"

    p = plan(make_body(prompt))

    assert p.delay_s == pytest.approx(0.025)
    assert p.ttft_s == pytest.approx(0.3)
    assert p.status == 503
    assert p.fail_times == 2
    assert p.drop_after == 4
    assert p.stall_after == 6
    assert p.directives["drop_after"] == 4


def test_plan_follows_the_last_user_message_only() -> None:
    body = {
        "model": "fake-gpt",
        "messages": [
            {"role": "user", "content": "[fake chunks=1]"},
            {"role": "assistant", "content": "[fake chunks=2]"},
            {"role": "user", "content": [{"type": "text", "text": "again [fake chunks=3]"}]},
            {"role": "tool", "content": "[fake chunks=4]"},
        ],
    }

    assert len(plan(body).content) == 3


@pytest.mark.parametrize("model", ["fake-reasoner", "openai/reasoning-model"])
def test_plan_reasons_by_default_when_the_model_name_contains_reason(model: str) -> None:
    p = plan(make_body(model=model))

    assert len(p.reasoning) == 6
    assert p.reasoning_text == " ".join(fake_llm.REASONING[:6])
    assert len(p.content) == 24


def test_plan_reasoning_directive_overrides_the_model_default() -> None:
    assert plan(make_body("[fake reasoning=0]", model="fake-reasoner")).reasoning == ()
    assert len(plan(make_body("[fake reasoning=3]")).reasoning) == 3


def test_plan_with_tools_calls_the_first_tool_instead_of_writing_content() -> None:
    other = {"type": "function", "function": {"name": "other"}}

    p = plan(make_body(tools=[WEATHER_TOOL, other]))

    assert p.tool_call is not None
    assert p.tool_call.name == "get_weather"
    assert p.tool_call.id == "call_fake_0"
    assert json.loads(p.tool_call.arguments) == TOOL_ARGUMENTS
    assert p.content == ()
    assert p.finish_reason == "tool_calls"


def test_plan_with_tools_still_honours_a_chunks_directive() -> None:
    p = plan(make_body("[fake chunks=2]", tools=[WEATHER_TOOL]))

    assert len(p.content) == 2
    assert p.tool_call is not None


def test_plan_tool_call_pieces_join_to_the_arguments_and_split_mid_json() -> None:
    p = plan(make_body(tools=[WEATHER_TOOL]))
    assert p.tool_call is not None
    pieces, arguments = p.tool_call.pieces, p.tool_call.arguments

    assert "".join(pieces) == arguments
    assert len(pieces) > 1
    prefixes = ["".join(pieces[:i]) for i in range(1, len(pieces))]
    for prefix in prefixes:
        with pytest.raises(json.JSONDecodeError):
            json.loads(prefix)
    assert any(prefix.count('"') % 2 == 1 for prefix in prefixes)  # a cut inside a string


def test_plan_counts_usage_from_the_plan() -> None:
    body = {
        "model": "fake-reasoner",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "three word prompt [fake chunks=4 reasoning=2]"},
        ],
        "tools": [WEATHER_TOOL],
        "stream_options": {"include_usage": True},
    }

    p = plan(body)

    assert p.tool_call is not None
    assert p.prompt_tokens == 2 + 6  # whitespace-separated words, the directive's included
    assert p.completion_tokens == 4 + 2 + len(p.tool_call.pieces)
    assert p.include_usage is True
    usage = fake_llm.usage_chunk(p, "id")
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": p.prompt_tokens,
        "completion_tokens": p.completion_tokens,
        "total_tokens": p.prompt_tokens + p.completion_tokens,
    }


def test_plan_includes_usage_only_when_asked() -> None:
    assert plan(make_body()).include_usage is False
    assert plan(make_body(stream_options={"include_usage": False})).include_usage is False


def test_plan_is_a_pure_function_of_the_request() -> None:
    body = make_body("[fake chunks=7 reasoning=2]", model="fake-reasoner", tools=[WEATHER_TOOL])

    assert plan(body) == plan(body)


def test_chunks_of_a_plan_open_with_the_role_and_close_with_the_finish_reason() -> None:
    p = plan(make_body("[fake chunks=3 reasoning=1]", tools=[WEATHER_TOOL]))
    assert p.tool_call is not None

    out = fake_llm.chunks(p, "chatcmpl-x")

    assert {c["id"] for c in out} == {"chatcmpl-x"}
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert out[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    assert len(out) == 1 + 1 + 3 + len(p.tool_call.pieces) + 1
