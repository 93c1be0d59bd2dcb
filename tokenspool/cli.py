"""The ``tokenspool`` command: run the servers, submit and follow jobs, run the demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from .client import AsyncClient
from .errors import TokenspoolError
from .settings import Settings

DEFAULT_API = os.environ.get("TOKENSPOOL_API_URL", "http://127.0.0.1:8000")


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api import create_app  # the API is an entry layer over the core

    from .logs import setup_logging

    settings = Settings()
    setup_logging(settings)
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from worker import run_worker

    run_worker(Settings())
    return 0


def _cmd_fake_llm(args: argparse.Namespace) -> int:
    import uvicorn

    from .fake_llm import create_app

    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")
    return 0


def _cmd_redis(args: argparse.Namespace) -> int:
    from .embedded import RedisServer

    server = RedisServer(
        args.port, appendonly=args.aof, data_dir=Path(args.dir) if args.dir else None
    ).start()
    print(f"Redis listening on {server.url} (data in {server.data_dir}); Ctrl-C stops it")
    try:
        assert server.proc is not None
        server.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


async def _submit(args: argparse.Namespace) -> int:
    from .render import follow

    async with AsyncClient(args.api) as client:
        accepted = await client.submit(args.model, args.prompt)
        if not args.follow:
            print(accepted.id)
            return 0
        Console(stderr=True).print(f"[dim]job {accepted.id}[/dim]")
        renderer = await follow(client.events(accepted.id), as_json=args.json)
        return 0 if renderer.status == "completed" else 1


async def _tail(args: argparse.Namespace) -> int:
    from .render import follow

    async with AsyncClient(args.api) as client:
        renderer = await follow(client.events(args.job_id, after=args.after), as_json=args.json)
        return 0 if renderer.status == "completed" else 1


async def _status(args: argparse.Namespace) -> int:
    async with AsyncClient(args.api) as client:
        view = await client.get(args.job_id)
        print(view.model_dump_json(indent=2))
        return 0


async def _cancel(args: argparse.Namespace) -> int:
    async with AsyncClient(args.api) as client:
        print(await client.cancel(args.job_id))
        return 0


async def _jobs(args: argparse.Namespace) -> int:
    from rich.table import Table

    async with AsyncClient(args.api) as client:
        table = Table("id", "status", "model", "attempt", "created")
        for view in await client.jobs(args.limit):
            created = time.strftime("%H:%M:%S", time.localtime(view.created_at))
            table.add_row(view.id, view.status.value, view.model, str(view.attempt), created)
        Console().print(table)
        return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(workers=args.workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenspool", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("api", help="run the HTTP API (uvicorn)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=_cmd_api)

    p = sub.add_parser("worker", help="run an arq worker")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("fake-llm", help="run the scripted OpenAI-compatible fake provider")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--port", type=int, default=int(os.environ.get("TOKENSPOOL_FAKE_LLM_PORT", "8765"))
    )
    p.set_defaults(func=_cmd_fake_llm)

    p = sub.add_parser("redis", help="run the bundled Valkey server")
    p.add_argument("--port", type=int, default=6379)
    p.add_argument("--dir", help="data directory (default: a new temporary one)")
    p.add_argument("--aof", action="store_true", help="append-only file persistence")
    p.set_defaults(func=_cmd_redis)

    p = sub.add_parser("submit", help="queue a job; --follow renders it live")
    p.add_argument("model")
    p.add_argument("prompt")
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--json", action="store_true", help="print raw events as JSON lines")
    p.add_argument("--api", default=DEFAULT_API)
    p.set_defaults(coro=_submit)

    p = sub.add_parser("tail", help="follow a job's events (resumes after drops)")
    p.add_argument("job_id")
    p.add_argument("--after", default="0", help="resume after this event id")
    p.add_argument("--json", action="store_true")
    p.add_argument("--api", default=DEFAULT_API)
    p.set_defaults(coro=_tail)

    p = sub.add_parser("status", help="show a job's status and output")
    p.add_argument("job_id")
    p.add_argument("--api", default=DEFAULT_API)
    p.set_defaults(coro=_status)

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id")
    p.add_argument("--api", default=DEFAULT_API)
    p.set_defaults(coro=_cancel)

    p = sub.add_parser("jobs", help="list recent jobs")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--api", default=DEFAULT_API)
    p.set_defaults(coro=_jobs)

    p = sub.add_parser("demo", help="start a whole local stack and stream a job through it")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "coro"):
            return asyncio.run(args.coro(args))
        return int(args.func(args))
    except TokenspoolError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
