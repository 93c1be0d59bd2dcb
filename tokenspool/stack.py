"""A whole local stack (Redis, fake provider, API, workers) as separate processes on loopback.

The demo, the end-to-end tests and the benchmarks all start the same stack from here.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .embedded import Child, RedisServer, free_port, python_child


def write_models_file(path: Path, fake_port: int) -> Path:
    """A models file whose models are served by the fake provider on ``fake_port``."""
    base = f"http://127.0.0.1:{fake_port}/v1"
    models = [
        {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{name}",
                "api_base": base,
                "api_key": "fake-key",
                # made-up prices, so costs show up end to end
                "input_cost_per_token": 0.000001,
                "output_cost_per_token": 0.000002,
            },
        }
        for name in ("fake-gpt", "fake-reasoner")
    ]
    path.write_text(yaml.safe_dump({"model_list": models}))
    return path


@dataclass
class Stack:
    """Handles to the running processes; ``stop()`` ends them all."""

    workdir: Path
    redis: RedisServer
    env: dict[str, str]
    api_port: int
    fake_port: int
    fake: Child | None = None
    api: Child | None = None
    workers: list[Child] = field(default_factory=list)
    started_workers: int = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def fake_url(self) -> str:
        return f"http://127.0.0.1:{self.fake_port}"

    def start_worker(self, extra_env: dict[str, str] | None = None) -> Child:
        self.started_workers += 1
        n = self.started_workers
        child = python_child(
            f"worker-{n}",
            ["worker"],
            None,
            {**self.env, **(extra_env or {})},
            self.workdir / f"worker-{n}.log",
        )
        self.workers.append(child)
        return child

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until a worker has started polling (arq writes its health-check key then)."""
        import time

        from redis import Redis

        client = Redis.from_url(self.redis.url)
        try:
            deadline = time.monotonic() + timeout
            key = self.env.get("TOKENSPOOL_QUEUE_NAME", "tokenspool:queue") + ":health-check"
            while not client.exists(key):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no worker ready after {timeout}s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        for child in [*self.workers, self.api, self.fake]:
            if child is not None:
                child.stop()
        self.redis.stop()


def start_stack(
    workers: int = 2,
    *,
    appendonly: bool = False,
    extra_env: dict[str, str] | None = None,
    workdir: Path | None = None,
) -> Stack:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="tokenspool-stack-"))
    (workdir / "redis").mkdir(parents=True, exist_ok=True)
    redis = RedisServer(appendonly=appendonly, data_dir=workdir / "redis").start()
    fake_port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        "TOKENSPOOL_REDIS_URL": redis.url,
        "TOKENSPOOL_MODELS_FILE": str(write_models_file(workdir / "models.yaml", fake_port)),
        "TOKENSPOOL_API_PORT": str(api_port),
        "TOKENSPOOL_FAKE_LLM_PORT": str(fake_port),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        **(extra_env or {}),
    }
    stack = Stack(workdir=workdir, redis=redis, env=env, api_port=api_port, fake_port=fake_port)
    try:
        stack.fake = python_child(
            "fake-llm",
            ["fake-llm", "--port", str(fake_port)],
            fake_port,
            env,
            workdir / "fake-llm.log",
        )
        stack.api = python_child(
            "api", ["api", "--port", str(api_port)], api_port, env, workdir / "api.log"
        )
        for _ in range(workers):
            stack.start_worker()
    except BaseException:
        stack.stop()
        raise
    return stack
