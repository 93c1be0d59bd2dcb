"""Every example in examples/ runs against the real stack and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokenspool.stack import Stack

from .helpers import expected

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TEXT = expected("fake-gpt", "hello [fake chunks=8]").text


def run(stack: Stack, *command: str) -> str:
    env = {**os.environ, "TOKENSPOOL_API_URL": stack.api_url}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    done = subprocess.run(
        command, cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_every_example_is_covered_here() -> None:
    names = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh")}
    assert names == {"curl.sh", "openai_sdk.py", "python_client.py", "structured.py", "cli.sh"}


def test_curl_example_streams_and_resumes_after_the_third_event(stack: Stack) -> None:
    out = run(stack, "bash", "curl.sh")
    lines = out.splitlines()
    assert "event: job.completed" in lines
    total = sum(line.startswith("event:") for line in lines[:-1])
    assert int(lines[-1]) == total - 3  # resumed: exactly the rest


def test_openai_sdk_example_prints_the_answer_and_usage(stack: Stack) -> None:
    out = run(stack, sys.executable, "openai_sdk.py")
    assert out.startswith(TEXT) and "tokens]" in out


def test_python_client_example_resumes_without_gaps_or_repeats(stack: Stack) -> None:
    out = run(stack, sys.executable, "python_client.py")
    want = expected("fake-gpt", "hello [fake chunks=12 delay_ms=20]").text
    assert out.splitlines()[0] == want and "[completed" in out


def test_structured_example_ends_with_a_validated_instance(stack: Stack) -> None:
    out = run(stack, sys.executable, "structured.py")
    assert out.splitlines()[-1] == 'final: {"city":"streamed text value","days":42,"windy":true}'


@pytest.mark.timeout(180)
def test_cli_example_follows_jobs_and_lists_them(stack: Stack) -> None:
    out = run(stack, "bash", "cli.sh")
    assert '"type":"job.completed"' in out and "completed" in out
