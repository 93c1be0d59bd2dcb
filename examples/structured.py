"""Structured outputs: partial objects while the JSON streams, then a validated instance."""

import asyncio
import os

from pydantic import BaseModel

from tokenspool import AsyncClient

API = os.environ.get("TOKENSPOOL_API_URL", "http://127.0.0.1:8000")


class Forecast(BaseModel):
    city: str
    days: int
    windy: bool


async def main() -> None:
    async with AsyncClient(API) as client:
        async for partial in client.structured_stream("fake-gpt", "forecast", Forecast):
            print(repr(partial))
        final = await client.structured("fake-gpt", "forecast", Forecast)
        print("final:", final.model_dump_json())


asyncio.run(main())
