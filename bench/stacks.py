"""The stack under test: ``tokenspool.stack`` processes plus the bench's clocked provider.

One stack serves several scenarios; each sets the worker processes it needs (count and
environment) with :meth:`BenchStack.set_workers`, which waits until every new worker has
finished its start-up (litellm import) and polls the queue.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml
from redis import Redis

from tokenspool.embedded import Child, free_port, wait_for_port
from tokenspool.stack import Stack, start_stack

REPO = Path(__file__).resolve().parent.parent
FAKE_MODEL = "fake-gpt"  # the stack's fake provider
CLOCKED_MODEL = "clocked-gpt"  # bench/clocked_provider.py


def _models_file(path: Path) -> Path:
    # api_base is read from the worker's environment when the model is called, so one file
    # serves providers whose ports are known only once the stack is up
    models = [
        {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{name}",
                "api_base": f"os.environ/{var}",
                "api_key": "fake-key",
            },
        }
        for name, var in (
            (FAKE_MODEL, "BENCH_FAKE_API_BASE"),
            (CLOCKED_MODEL, "BENCH_CLOCKED_API_BASE"),
        )
    ]
    path.write_text(yaml.safe_dump({"model_list": models}))
    return path


class BenchStack:
    """Redis, fake provider, clocked provider, API, and a settable set of workers."""

    def __init__(self, api_env: dict[str, str] | None = None) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="tokenspool-bench-"))
        env = {
            "TOKENSPOOL_MODELS_FILE": str(_models_file(self.workdir / "bench-models.yaml")),
            **(api_env or {}),
        }
        self.stack: Stack = start_stack(workers=0, extra_env=env, workdir=self.workdir)
        self.clocked_port = free_port()
        try:
            self.clocked = self._bench_child(
                "clocked-provider", "bench.clocked_provider", "--port", str(self.clocked_port)
            )
            wait_for_port(self.clocked_port, self.clocked.proc, timeout=30)
        except BaseException:
            self.stack.stop()
            raise

    def _bench_child(self, name: str, module: str, *args: str) -> Child:
        return Child(
            name,
            [sys.executable, "-m", module, *args],
            # bench/ must be importable; an existing PYTHONPATH (another checkout's packages,
            # measured instead of this one's) keeps precedence
            {
                **self.stack.env,
                "PYTHONPATH": os.pathsep.join(
                    p for p in (self.stack.env.get("PYTHONPATH"), str(REPO)) if p
                ),
            },
            self.workdir / f"{name}.log",
        ).start()

    @contextlib.contextmanager
    def minimal_relay(self) -> Iterator[tuple[Child, Child, int]]:
        """``bench/minimal_relay.py``'s worker and API on this stack's Redis and clocked
        provider: (worker, api, api port), stopped on exit."""
        port = free_port()
        url = self.redis_url
        worker = self._bench_child(
            "minimal-worker",
            "bench.minimal_relay",
            "worker",
            "--redis",
            url,
            "--provider",
            self.clocked_url + "/v1",
            "--model",
            CLOCKED_MODEL,
        )
        try:
            api = self._bench_child(
                "minimal-api", "bench.minimal_relay", "api", "--redis", url, "--port", str(port)
            )
            try:
                wait_for_port(port, api.proc, timeout=30)
                yield worker, api, port
            finally:
                api.stop()
        finally:
            worker.stop()

    @property
    def api_port(self) -> int:
        return self.stack.api_port

    @property
    def api_url(self) -> str:
        return self.stack.api_url

    @property
    def fake_url(self) -> str:
        return self.stack.fake_url

    @property
    def clocked_url(self) -> str:
        return f"http://127.0.0.1:{self.clocked_port}"

    @property
    def redis_url(self) -> str:
        return self.stack.redis.url

    @property
    def workers(self) -> list[Child]:
        return self.stack.workers

    def pids(self) -> dict[str, int]:
        """Process ids by role, for CPU and memory readings."""
        assert self.stack.api is not None and self.stack.fake is not None
        out = {
            "api": self.stack.api.pid,
            "fake provider": self.stack.fake.pid,
            "clocked provider": self.clocked.pid,
            "redis": self.stack.redis.pid,
        }
        for i, worker in enumerate(self.workers, 1):
            out[f"worker {i}"] = worker.pid
        return out

    def set_workers(
        self, count: int, env: dict[str, str] | None = None, timeout: float = 90.0
    ) -> list[Child]:
        """Stop the running workers and start ``count`` new ones with ``env`` added."""
        for worker in self.stack.workers:
            worker.stop()
        self.stack.workers.clear()
        extra = {
            "BENCH_FAKE_API_BASE": self.fake_url + "/v1",
            "BENCH_CLOCKED_API_BASE": self.clocked_url + "/v1",
            **(env or {}),
        }
        self._clear_health_key()
        started = [self.stack.start_worker(extra) for _ in range(count)]
        deadline = time.monotonic() + timeout
        for worker in started:
            # the worker logs "worker <host>:<pid> ready" once its start-up hook has run
            marker = f":{worker.pid} ready"
            assert worker.log_path is not None
            while marker not in worker.log_path.read_text(errors="replace"):
                if worker.proc is not None and worker.proc.poll() is not None:
                    raise RuntimeError(
                        f"worker exited with {worker.proc.returncode}; see {worker.log_path}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"worker not ready after {timeout}s; see {worker.log_path}")
                time.sleep(0.05)
        if started:
            self.stack.wait_ready(timeout=30)  # a worker has polled the queue
        return started

    def _clear_health_key(self) -> None:
        # arq writes its health-check key on its first poll, after the start-up hook; a key
        # left by the previous workers would make wait_ready() return at once
        client = Redis.from_url(self.redis_url)
        try:
            client.delete(
                self.stack.env.get("TOKENSPOOL_QUEUE_NAME", "tokenspool:queue") + ":health-check"
            )
        finally:
            client.close()

    def stop(self) -> None:
        try:
            self.clocked.stop()
        finally:
            self.stack.stop()
