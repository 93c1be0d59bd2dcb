"""docker-compose.yml and the Dockerfile agree with the code: real commands, real models file."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tokenspool.cli import build_parser
from tokenspool.model_list import ModelList
from tokenspool.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_WORKDIR = "/app"  # where the Dockerfile copies the repository
TOKENSPOOL_SERVICES = ("api", "worker", "fake-llm")


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def _service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = _compose()["services"][name]
    return service


def _command(name: str) -> list[str]:
    command = _service(name)["command"]
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _environment(name: str) -> dict[str, str]:
    env = _service(name).get("environment") or {}
    if isinstance(env, list):  # the "KEY=value" list form
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _models_file_in_repo(service: str) -> Path:
    in_image = Path(_environment(service)["TOKENSPOOL_MODELS_FILE"])
    return ROOT / in_image.relative_to(IMAGE_WORKDIR)


def test_compose_defines_redis_fake_llm_api_and_worker() -> None:
    services = _compose()["services"]

    assert {"redis", "fake-llm", "api", "worker"} <= set(services)


def test_compose_api_and_worker_share_the_redis_service() -> None:
    api_url = _environment("api")["TOKENSPOOL_REDIS_URL"]
    worker_url = _environment("worker")["TOKENSPOOL_REDIS_URL"]

    assert api_url == worker_url
    assert urlsplit(api_url).scheme == "redis"
    assert urlsplit(api_url).hostname == "redis"


@pytest.mark.parametrize("service", TOKENSPOOL_SERVICES)
def test_compose_command_is_a_real_tokenspool_subcommand(service: str) -> None:
    program, *argv = _command(service)

    args = build_parser().parse_args(argv)  # exits (fails the test) on an unknown command

    assert program == "tokenspool"
    assert args.command == argv[0]


def test_compose_api_publishes_the_port_it_listens_on() -> None:
    port = _option(_command("api"), "--port")

    assert f"{port}:{port}" in [str(p) for p in _service("api")["ports"]]
    assert _option(_command("api"), "--host") == "0.0.0.0"


def test_compose_runs_two_workers() -> None:
    assert _service("worker")["deploy"]["replicas"] == 2


def test_compose_stop_waits_longer_than_the_worker_shutdown_grace() -> None:
    match = re.fullmatch(r"(\d+)s", str(_service("worker")["stop_grace_period"]))
    grace = Settings.model_fields["shutdown_grace_seconds"].default

    assert match is not None
    assert int(match.group(1)) > grace


def test_compose_api_and_worker_load_the_same_models_file_from_deploy() -> None:
    api_models = _models_file_in_repo("api")
    worker_models = _models_file_in_repo("worker")

    assert api_models == worker_models
    assert api_models.parent == ROOT / "deploy"
    assert api_models.is_file()


def test_compose_models_are_served_by_the_fake_llm_service() -> None:
    models = ModelList.load(_models_file_in_repo("api"), environ={})
    fake_port = int(_option(_command("fake-llm"), "--port"))

    assert models.names == ["fake-gpt", "fake-reasoner"]
    for name in models.names:
        api_base = urlsplit(models.params(name)["api_base"])
        assert api_base.hostname == "fake-llm"
        assert api_base.port == fake_port


def test_compose_api_and_worker_wait_for_a_healthy_redis() -> None:
    healthcheck = " ".join(str(part) for part in _service("redis")["healthcheck"]["test"])

    assert "redis-cli ping" in healthcheck
    for service in ("api", "worker"):
        assert _service(service)["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_redis_persists_with_append_only_file() -> None:
    redis = _service("redis")
    command = redis["command"]
    argv = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]

    assert _option(argv, "--appendonly") == "yes"
    assert any(str(volume).endswith(":/data") for volume in redis["volumes"])


def test_dockerfile_installs_the_project_with_the_pinned_constraints() -> None:
    text = DOCKERFILE.read_text()

    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r"^WORKDIR " + re.escape(IMAGE_WORKDIR) + r"\s*$", text, re.MULTILINE)
    assert re.search(r"^COPY .*\bconstraints\.txt\b", text, re.MULTILINE)
    assert re.search(r"^COPY deploy\b", text, re.MULTILINE)
    assert re.search(r"^RUN pip install -c constraints\.txt \.\s*$", text, re.MULTILINE)
