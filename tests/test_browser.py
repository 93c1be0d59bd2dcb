"""The page at ``GET /`` in a real headless Chromium (Debian's ``chromium``), driven by playwright.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (``make browser``
installs it). Without it these tests fail, never skip: the page is part of what we ship.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Request,
    async_playwright,
    expect,
)

from tokenspool.stack import Stack

from .conftest import ARTIFACTS
from .helpers import expected, sse_events

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # tests run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MISSING = (
    f"Chromium is not installed at {CHROMIUM}: run `make browser` "
    "(apt-get install --no-install-recommends chromium). Never `playwright install`."
)
WAIT_MS = 20_000  # every DOM wait has a deadline well inside the per-test timeout
expect.set_options(timeout=WAIT_MS)
SLOW = "[fake chunks=80 delay_ms=40]"  # ~3 s of streaming: time to act mid-stream
# the arguments of tool call 0 while it is still forming (a falsy value until then)
FORMING_ARGUMENTS = """() => {
  const call = document.querySelector("#tool-call-0");
  return call && !call.classList.contains("done") && call.querySelector(".arguments").textContent;
}"""
SAMPLE_TOOLS = [{"type": "function", "function": {"name": "get_weather"}}]  # as the page sends


def require_chromium() -> None:
    """Fail (never skip) the test that needs the browser when it is not installed."""
    if not CHROMIUM.exists():
        pytest.fail(MISSING, pytrace=False)


class Chromium:
    """Launches the browser on first use (so a missing one fails the test that needs it)."""

    def __init__(self) -> None:
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None

    async def browser(self) -> Browser:
        if self._browser is None:
            require_chromium()
            self._playwright = await async_playwright().start()
            self._browser = await self._playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
        return self._browser

    async def close(self) -> None:
        if self._browser is not None:
            await self._browser.close()
        if self._playwright is not None:
            await self._playwright.stop()


@dataclass
class Tab:
    """A page plus what it did that a test checks: script errors, requests it made."""

    page: Page
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def text(self, selector: str) -> Awaitable[str | None]:
        return self.page.locator(selector).text_content()


OpenPage = Callable[..., Awaitable[Tab]]


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Chromium]:
    browser = Chromium()
    try:
        yield browser
    finally:
        await browser.close()


@pytest.fixture
async def open_page(chromium: Chromium, stack: Stack) -> AsyncIterator[OpenPage]:
    """Opens the page at a path of the stack's API in a fresh browser context; closes them all."""
    contexts: list[BrowserContext] = []

    async def open_(path: str = "/") -> Tab:
        context = await (await chromium.browser()).new_context(
            viewport={"width": 1100, "height": 900}
        )
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        tab = Tab(page)

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                tab.errors.append(message.text)

        def on_request(request: Request) -> None:
            tab.requests.append(request.url)

        page.on("pageerror", lambda exc: tab.errors.append(str(exc)))
        page.on("console", on_console)
        page.on("request", on_request)
        response = await page.goto(stack.api_url + path)
        assert response is not None and response.status == 200
        await expect(page.locator("#model option[value='fake-gpt']")).to_have_count(1)
        return tab

    yield open_
    for context in contexts:
        await context.close()


async def submit(tab: Tab, model: str, prompt: str, *, tools: bool = False) -> str:
    """Fill the form, press Submit; returns the job id the page shows."""
    await tab.page.select_option("#model", model)
    await tab.page.fill("#prompt", prompt)
    if tools:
        await tab.page.check("#tools")
    await tab.page.click("#submit")
    await expect(tab.page.locator("#job-id")).to_have_text(re.compile(r"^job_"))
    job_id = await tab.text("#job-id")
    assert job_id
    return job_id


async def job_view(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def assert_clean(tab: Tab, stack: Stack) -> None:
    """No script errors, and nothing fetched from anywhere but the API itself."""
    assert tab.errors == []
    assert [url for url in tab.requests if not url.startswith(stack.api_url + "/")] == []


async def test_page_resumes_a_dropped_stream_exactly_where_it_was(
    open_page: OpenPage, stack: Stack, http: httpx.AsyncClient
) -> None:
    tab = await open_page("/")
    prompt = f"Tell me about durable streams {SLOW}"
    content = tab.page.locator("#content")

    job_id = await submit(tab, "fake-gpt", prompt)
    await expect(content).to_have_text(re.compile(r"\S"))
    await expect(tab.page.locator("#status")).to_have_text("running")
    before = await content.text_content() or ""
    await tab.page.click("#drop")
    await expect(tab.page.locator("#reconnects")).to_have_text("1")
    await expect(tab.page.locator("#status")).to_have_text("completed")
    await tab.page.screenshot(path=ARTIFACTS / "browser.png", full_page=True)

    shown = await content.text_content()
    reconnects = int(await tab.text("#reconnects") or "0")
    resumed_from = await tab.text("#resumed-from")
    view = await job_view(http, job_id)
    events = await sse_events(http, job_id)
    ids = [e["id"] for e in events]
    assert shown == view["output"]["content"] == expected("fake-gpt", prompt).text
    assert reconnects >= 1
    # the drop came mid-stream: the new connection resumed after a real event id, with content
    # still to come, by ?after= (EventSource cannot set Last-Event-ID itself)
    assert resumed_from in ids
    rest = events[ids.index(resumed_from) + 1 :]
    assert any(e["event"] == "content.delta" for e in rest)
    assert before and shown.startswith(before) and len(before) < len(shown)
    assert any(url.endswith(f"/events?after={resumed_from}") for url in tab.requests)
    assert await tab.page.locator("#drop").is_disabled()
    assert await tab.text("#connection") == "closed (job ended)"

    await tab.page.reload()  # the URL names the job (?job=<id>): the page replays its stream
    await expect(tab.page.locator("#connection")).to_have_text("closed (job ended)")
    await expect(content).to_have_text(shown)  # the replay ends with the same text
    assert_clean(tab, stack)


async def test_page_cancel_button_ends_the_job_cancelled(
    open_page: OpenPage, stack: Stack, http: httpx.AsyncClient
) -> None:
    tab = await open_page("/ui")
    prompt = "A long answer to cancel [fake chunks=400 delay_ms=40]"
    content = tab.page.locator("#content")

    job_id = await submit(tab, "fake-gpt", prompt)
    await expect(content).to_have_text(re.compile(r"\S"))
    await tab.page.click("#cancel")
    await expect(tab.page.locator("#status")).to_have_text("cancelled")

    shown = await content.text_content() or ""
    view = await job_view(http, job_id)
    assert view["status"] == "cancelled"
    assert shown == view["output"]["content"]
    assert 0 < len(shown) < len(expected("fake-gpt", prompt).text)
    assert await tab.page.locator("#cancel").is_disabled()
    assert_clean(tab, stack)


async def test_page_shows_reasoning_and_a_tool_call_as_they_form(
    open_page: OpenPage, stack: Stack, http: httpx.AsyncClient
) -> None:
    tab = await open_page("/")
    prompt = "What's the weather in Paris? [fake delay_ms=100]"
    plan = expected("fake-reasoner", prompt, tools=SAMPLE_TOOLS)
    assert plan.tool_call is not None

    job_id = await submit(tab, "fake-reasoner", prompt, tools=True)
    # checked every animation frame: the call is forming for well under a second
    forming = await tab.page.wait_for_function(FORMING_ARGUMENTS, polling="raf")
    partial = await forming.json_value()
    await expect(tab.page.locator("#status")).to_have_text("completed")

    await tab.page.click("#log-block summary")  # open the event log for the picture
    await tab.page.screenshot(path=ARTIFACTS / "browser-tools.png", full_page=True)

    view = await job_view(http, job_id)
    assert await tab.text("#reasoning") == plan.reasoning_text == view["output"]["reasoning"]
    assert await tab.page.locator("#reasoning-block").is_visible()
    assert await tab.text("#tool-call-0 .name") == "get_weather"
    assert await tab.text("#tool-call-0 .arguments") == plan.tool_call.arguments
    assert await tab.text("#tool-call-0 .state") == "done"
    assert partial and plan.tool_call.arguments.startswith(partial)
    assert partial != plan.tool_call.arguments
    assert (await tab.text("#outcome") or "").startswith("finish_reason: tool_calls")
    assert_clean(tab, stack)


async def test_page_discards_a_superseded_attempt_and_says_so(
    open_page: OpenPage, stack: Stack, http: httpx.AsyncClient
) -> None:
    # the provider cuts the first attempt after 5 chunks; the next attempt starts over
    prompt = f"Drop once {uuid.uuid4().hex} [fake drop_after=5 fail_times=1 chunks=30 delay_ms=20]"

    tab = await open_page("/")
    job_id = await submit(tab, "fake-gpt", prompt)
    await expect(tab.page.locator("#status")).to_have_text("completed")

    view = await job_view(http, job_id)
    assert (
        await tab.text("#content") == view["output"]["content"] == expected("fake-gpt", prompt).text
    )
    assert await tab.text("#attempt") == "2"
    note = await tab.text("#note") or ""
    assert "Attempt 1 was superseded" in note and "attempt 2 starts over" in note
    assert_clean(tab, stack)
