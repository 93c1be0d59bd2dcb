"""tokenspool's own client: submit, follow typed events, drop, and resume where it was."""

import asyncio
import os

from tokenspool import AsyncClient

API = os.environ.get("TOKENSPOOL_API_URL", "http://127.0.0.1:8000")


async def main() -> None:
    async with AsyncClient(API) as client:
        job = await client.submit("fake-gpt", "hello [fake chunks=12 delay_ms=20]")
        last = "0"
        async for event in client.events(job.id):
            if event.type == "content.delta":
                print(event.text, end="", flush=True)
            last = event.event_id or last
            if event.type == "content.delta" and event.text.startswith("outlive"):
                break  # pretend the laptop lid closed here
        # ...and reconnect later from the last id seen: nothing lost, nothing repeated
        async for event in client.events(job.id, after=last):
            if event.type == "content.delta":
                print(event.text, end="", flush=True)
        view = await client.get(job.id)
        print(f"\n[{view.status.value}, cost ${view.usage.cost_usd if view.usage else 0}]")


asyncio.run(main())
