"""The official openai SDK, unchanged, against tokenspool's OpenAI-compatible surface."""

import asyncio
import os

from openai import AsyncOpenAI

API = os.environ.get("TOKENSPOOL_API_URL", "http://127.0.0.1:8000")


async def main() -> None:
    client = AsyncOpenAI(base_url=f"{API}/v1", api_key="unused")
    stream = await client.chat.completions.create(
        model="fake-gpt",
        messages=[{"role": "user", "content": "hello [fake chunks=8]"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage:
            print(f"\n[{chunk.usage.total_tokens} tokens]")
    await client.close()


asyncio.run(main())
