"""The direct OpenAI-compatible path yields the same events as the litellm path.

Every fake-provider script runs through both, against the same real fake provider over HTTP;
the event sequences (or the error class, for failing scripts) must be identical.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import LineTooLong

from tokenspool import fastpath
from tokenspool.chunks import ChunkMapper
from tokenspool.embedded import free_port, python_child
from tokenspool.errors import ProviderError
from tokenspool.events import ContentDelta
from tokenspool.fastpath import FastOpenAIStream
from tokenspool.provider import KEEP_CHUNKS, ProviderStream

from .conftest import stack_dir

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
}
SCRIPTS: list[tuple[str, str, dict[str, Any]]] = [
    ("fake-gpt", "plain [fake chunks=40]", {}),
    ("fake-gpt", "empty [fake chunks=0]", {}),
    ("fake-reasoner", "think [fake chunks=5 reasoning=7]", {}),
    ("fake-gpt", "tool please", {"tools": TOOLS, "tool_choice": "auto"}),
    ("fake-gpt", "tool and text [fake chunks=3]", {"tools": TOOLS}),
    (
        "fake-gpt",
        "json please",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": SCHEMA},
            }
        },
    ),
    ("fake-gpt", "unicode é 🤔 [fake chunks=7]", {"temperature": 0.2, "max_tokens": 50}),
    ("fake-gpt", "limited [fake status=429]", {}),
    ("fake-gpt", "broken [fake status=500]", {}),
    ("fake-gpt", "overloaded [fake status=503]", {}),
    ("fake-gpt", "bad [fake status=400]", {}),
    ("fake-gpt", "dropped [fake drop_after=4 chunks=10]", {}),
    ("fake-gpt", "stalled [fake stall_after=3 chunks=10]", {}),
    ("fake-gpt", "stalled before a chunk [fake stall_after=0 chunks=10]", {}),
    ("fake-gpt", "dropped before a chunk [fake drop_after=0 chunks=10]", {}),
    ("fake-gpt", "lines cut in pieces [fake chunks=6 split=37]", {}),
    ("fake-gpt", "crlf line ends [fake chunks=6 crlf=1]", {}),
    ("fake-gpt", "crlf cut between cr and lf [fake chunks=4 crlf=1 split=3]", {}),
]


@pytest.fixture(scope="module", autouse=True)
async def provider_session() -> AsyncIterator[None]:
    """The fast path's process-wide session, closed with this module's tests."""
    yield
    await fastpath.aclose()


@pytest.fixture(scope="module")
def fake_base() -> Iterator[str]:
    port = free_port()
    workdir = stack_dir("fastpath")
    child = python_child(
        "fake-llm",
        ["fake-llm", "--port", str(port)],
        port,
        dict(os.environ),
        workdir / "fake-llm.log",
    )
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        child.stop()


async def run(kind: type, base: str, model: str, prompt: str, extra: dict[str, Any]) -> Any:
    params = {"model": f"openai/{model}", "api_base": base, "api_key": "fake-key"}
    kwargs = {"messages": [{"role": "user", "content": prompt}], **extra}
    # a short idle timeout only where the script stalls: litellm's first call in a process
    # (lazy imports) can exceed it on a loaded machine
    stream = kind(params, kwargs, 1.0 if "stall_after" in prompt else 10.0)
    mapper = ChunkMapper("job_x", 1)
    events = []
    try:
        await stream.open()
        async for chunk in stream.chunks():
            events += mapper.feed(chunk)
        events += mapper.finish()
    except ProviderError as exc:
        return ("error", exc.type, exc.retryable, exc.status_code, len(events) > 0)
    finally:
        await stream.aclose()
    return [e.model_dump(mode="json") for e in events], mapper.finish_reason


@pytest.mark.parametrize(("model", "prompt", "extra"), SCRIPTS, ids=[s[1] for s in SCRIPTS])
async def test_fast_path_yields_the_same_events_as_litellm(
    fake_base: str, model: str, prompt: str, extra: dict[str, Any]
) -> None:
    via_litellm = await run(ProviderStream, fake_base, model, prompt, extra)
    direct = await run(FastOpenAIStream, fake_base, model, prompt, extra)

    assert direct == via_litellm


@pytest.mark.parametrize(
    "prompt", ["[fake chunks=3 pad=3000]", "[fake chunks=3 pad=3000 split=512]"]
)
async def test_a_line_longer_than_the_limit_breaks_the_stream_whole_or_in_pieces(
    fake_base: str, prompt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the partial line kept between reads is bounded, as a whole line is
    monkeypatch.setattr(fastpath, "MAX_LINE_BYTES", 2048)
    result = await run(FastOpenAIStream, fake_base, "fake-gpt", prompt, {})
    assert result == ("error", "MidStreamFallbackError", True, 500, False)
    unpadded = await run(FastOpenAIStream, fake_base, "fake-gpt", "[fake chunks=3 split=512]", {})
    assert [e["type"] for e in unpadded[0]].count("content.delta") == 3


async def test_a_line_that_never_ends_is_cut_off_at_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a provider that sends bytes without a line break is not buffered without bound
    monkeypatch.setattr(fastpath, "MAX_LINE_BYTES", 2048)
    loop = asyncio.get_running_loop()
    content = aiohttp.StreamReader(BaseProtocol(loop), 2**16, loop=loop)
    lines = fastpath._lines(content)
    content.feed_data(b"data: {}\n\ndata: ")
    assert await anext(lines) == [b"data: {}", b""]
    for _ in range(3):
        content.feed_data(b"x" * 1000)  # no line break, and no end of the body
    with pytest.raises(LineTooLong):
        await anext(lines)


def test_fast_path_applies_only_to_plain_openai_compatible_models() -> None:
    base = {"model": "openai/x", "api_base": "http://h/v1", "api_key": "k"}
    assert fastpath.applies(base)
    assert fastpath.applies({**base, "input_cost_per_token": 1e-6})
    assert not fastpath.applies({**base, "model": "anthropic/claude"})
    assert not fastpath.applies({"model": "openai/gpt-4o"})  # no api_base: litellm decides
    assert not fastpath.applies({**base, "extra_headers": {"x": "y"}})  # unknown option


async def test_litellm_path_keeps_a_bounded_number_of_chunks(fake_base: str) -> None:
    # litellm's stream wrapper would otherwise hold every chunk until the stream ends
    params = {"model": "openai/fake-gpt", "api_base": fake_base, "api_key": "fake-key"}
    prompt = {"messages": [{"role": "user", "content": "long [fake chunks=600]"}]}
    stream = ProviderStream(params, prompt, 5.0)
    mapper = ChunkMapper("job_x", 1)
    held, contents = [], 0
    try:
        await stream.open()
        async for chunk in stream.chunks():
            contents += sum(isinstance(e, ContentDelta) for e in mapper.feed(chunk))
            held.append(len(stream._response.chunks))
        mapper.finish()
    finally:
        await stream.aclose()
    assert contents == 600
    assert mapper.usage is not None and mapper.usage.completion_tokens == 600
    assert max(held) <= 2 * KEEP_CHUNKS
