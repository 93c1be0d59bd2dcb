"""Models from a LiteLLM-proxy-style config file (``model_list:`` of model_name + litellm_params).

A LiteLLM proxy user can point ``TOKENSPOOL_MODELS_FILE`` at their existing config. Values of
the form ``os.environ/NAME`` are read from the environment, as the proxy does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, UnknownModelError


class LitellmParams(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    api_base: str | None = None
    api_key: str | None = None


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    model_name: str = Field(min_length=1)
    litellm_params: LitellmParams


class ModelsFile(BaseModel):
    model_config = ConfigDict(extra="allow")

    model_list: list[ModelEntry] = Field(min_length=1)


def _resolve_env(value: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("os.environ/"):
        name = value.removeprefix("os.environ/")
        if name not in environ:
            raise ConfigError(f"models file refers to unset environment variable {name}")
        return environ[name]
    return value


class ModelList:
    """The configured models by public name; the first entry of a repeated name wins."""

    def __init__(self, entries: list[ModelEntry], environ: Mapping[str, str] | None = None):
        self._entries: dict[str, ModelEntry] = {}
        for entry in entries:
            self._entries.setdefault(entry.model_name, entry)
        self._environ = os.environ if environ is None else environ

    @classmethod
    def load(cls, path: Path | str, environ: Mapping[str, str] | None = None) -> ModelList:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read models file {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"models file {path} is not valid YAML: {exc}") from exc
        try:
            parsed = ModelsFile.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"models file {path} is invalid: {exc}") from exc
        return cls(parsed.model_list, environ)

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def check(self, name: str) -> None:
        if name not in self._entries:
            raise UnknownModelError(name, self.names)

    def params(self, name: str) -> dict[str, Any]:
        """The litellm keyword arguments for a model (``model``, ``api_base``, ``api_key``...)."""
        self.check(name)
        raw = self._entries[name].litellm_params.model_dump(exclude_none=True)
        return {key: _resolve_env(value, self._environ) for key, value in raw.items()}
