"""Settings come from TOKENSPOOL_* variables; models from a LiteLLM-proxy-style YAML file."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tokenspool.errors import ConfigError, TokenspoolError, UnknownModelError
from tokenspool.model_list import ModelList
from tokenspool.settings import DEFAULT_MODELS_FILE, Settings

MODELS_YAML = """\
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: os.environ/TS_TEST_OPENAI_KEY
      temperature: 0.5
  - model_name: local
    litellm_params:
      model: openai/local
      api_base: http://127.0.0.1:9999/v1
      api_key: plain-key
  - model_name: gpt
    litellm_params:
      model: openai/shadowed
"""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The process environment without any TOKENSPOOL_* variable (restored afterwards)."""
    import os

    for name in [n for n in os.environ if n.upper().startswith("TOKENSPOOL_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def models_file(tmp_path: Path) -> Callable[[str], Path]:
    """Factory: writes a models file under the test's tmp dir and returns its path."""
    counter = iter(range(1_000))

    def write(text: str) -> Path:
        path = tmp_path / f"models-{next(counter)}.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


# ---------------------------------------------------------------- Settings


def test_settings_read_tokenspool_variables_from_the_environment(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("TOKENSPOOL_READ_COUNT", "7")
    clean_env.setenv("TOKENSPOOL_KEY_PREFIX", "ts-test")
    clean_env.setenv("TOKENSPOOL_HEARTBEAT_SECONDS", "0.5")
    clean_env.setenv("TOKENSPOOL_LOG_JSON", "true")

    settings = Settings()

    assert settings.read_count == 7
    assert settings.key_prefix == "ts-test"
    assert settings.heartbeat_seconds == 0.5
    assert settings.log_json is True
    assert Settings.from_env() == settings


def test_settings_defaults_without_environment(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings()

    assert settings.read_count == 100
    assert settings.key_prefix == "tokenspool"
    assert settings.models_file == DEFAULT_MODELS_FILE


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOKENSPOOL_READ_COUNT", "0"),
        ("TOKENSPOOL_READ_COUNT", "10001"),
        ("TOKENSPOOL_READ_BLOCK_MS", "0"),
        ("TOKENSPOOL_STREAM_MAXLEN", "10"),
        ("TOKENSPOOL_HEARTBEAT_SECONDS", "0"),
        ("TOKENSPOOL_MAX_JOBS", "many"),
        ("TOKENSPOOL_KEY_PREFIX", "has space"),
        ("TOKENSPOOL_KEY_PREFIX", "a:b"),
    ],
)
def test_settings_reject_invalid_environment_values(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    clean_env.setenv(name, value)

    with pytest.raises(ValidationError):
        Settings()


def test_settings_from_env_prefers_the_mapping_over_the_environment(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("TOKENSPOOL_MAX_JOBS", "99")

    settings = Settings.from_env({"TOKENSPOOL_MAX_JOBS": "3"})

    assert settings.max_jobs == 3


# Settings.from_env passes the mapping to model_validate, which pydantic routes through
# BaseSettings.__init__ (a custom __init__), so the process environment still fills the
# fields the mapping leaves out. Fix reported to the lead; strict, so the fix flips it.
def test_settings_from_env_uses_only_the_mapping_given(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TOKENSPOOL_READ_COUNT", "42")
    clean_env.setenv("TOKENSPOOL_MAX_JOBS", "99")

    settings = Settings.from_env({"TOKENSPOOL_MAX_JOBS": "3", "OTHER_VAR": "x"})

    assert settings.max_jobs == 3
    assert settings.read_count == 100


def test_settings_from_env_rejects_invalid_values_in_the_mapping() -> None:
    with pytest.raises(ValidationError):
        Settings.from_env({"TOKENSPOOL_READ_COUNT": "0"})


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})

    with pytest.raises(ValidationError):
        # setattr: a plain assignment is a type error under the pydantic mypy plugin
        setattr(settings, "read_count", 5)  # noqa: B010


# ---------------------------------------------------------------- ModelList


def test_model_list_resolves_os_environ_references(models_file: Callable[[str], Path]) -> None:
    models = ModelList.load(models_file(MODELS_YAML), {"TS_TEST_OPENAI_KEY": "sk-test"})

    assert models.names == ["gpt", "local"]
    assert "gpt" in models
    assert models.params("gpt") == {
        "model": "openai/gpt-4o-mini",
        "api_key": "sk-test",
        "temperature": 0.5,
    }
    assert models.params("local") == {
        "model": "openai/local",
        "api_base": "http://127.0.0.1:9999/v1",
        "api_key": "plain-key",
    }


def test_model_list_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch, models_file: Callable[[str], Path]
) -> None:
    monkeypatch.setenv("TS_TEST_OPENAI_KEY", "sk-from-env")

    models = ModelList.load(models_file(MODELS_YAML))

    assert models.params("gpt")["api_key"] == "sk-from-env"


def test_model_list_raises_config_error_for_missing_env_var(
    models_file: Callable[[str], Path],
) -> None:
    models = ModelList.load(models_file(MODELS_YAML), {})

    with pytest.raises(ConfigError, match="TS_TEST_OPENAI_KEY"):
        models.params("gpt")


def test_model_list_raises_config_error_for_invalid_yaml(
    models_file: Callable[[str], Path],
) -> None:
    path = models_file("model_list: [unclosed\n  - : :\n")

    with pytest.raises(ConfigError, match="not valid YAML"):
        ModelList.load(path, {})


@pytest.mark.parametrize(
    "text",
    ["model_list: []\n", "{}\n", "", "model_list:\n  - model_name: x\n"],
    ids=["empty-list", "no-list", "empty-file", "no-params"],
)
def test_model_list_raises_config_error_for_empty_or_invalid_model_list(
    models_file: Callable[[str], Path], text: str
) -> None:
    with pytest.raises(ConfigError, match="invalid"):
        ModelList.load(models_file(text), {})


def test_model_list_raises_config_error_for_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        ModelList.load(tmp_path / "absent.yaml", {})


def test_model_list_check_raises_unknown_model_listing_configured_models(
    models_file: Callable[[str], Path],
) -> None:
    models = ModelList.load(models_file(MODELS_YAML), {})

    with pytest.raises(UnknownModelError) as info:
        models.check("gpt-5")

    message = str(info.value)
    assert "'gpt-5'" in message
    assert "gpt, local" in message
    assert info.value.available == ["gpt", "local"]
    assert isinstance(info.value, TokenspoolError)


def test_model_list_params_of_unknown_model_raises_unknown_model(
    models_file: Callable[[str], Path],
) -> None:
    models = ModelList.load(models_file(MODELS_YAML), {})

    with pytest.raises(UnknownModelError):
        models.params("nope")


def test_packaged_default_models_file_loads() -> None:
    models = ModelList.load(DEFAULT_MODELS_FILE, {})

    assert models.names == ["fake-gpt", "fake-reasoner"]
    for name in models.names:
        models.check(name)
        assert models.params(name)["model"].startswith("openai/")


@pytest.mark.parametrize(
    ("prompt", "completion"), [(0, 0), (1, 0), (0, 1), (12, 345), (123_456, 7_890)]
)
def test_a_models_own_prices_cost_what_litellm_computes_for_them(
    prompt: int, completion: int
) -> None:
    # imported here: litellm takes ~2 s to import, which only this test of the module needs
    from litellm.types.utils import CostPerToken

    from tokenspool.provider import cost_usd, load_litellm

    params = {
        "model": "openai/anything",
        "input_cost_per_token": 1.5e-06,
        "output_cost_per_token": 2.25e-06,
    }
    custom = CostPerToken(input_cost_per_token=1.5e-06, output_cost_per_token=2.25e-06)
    litellm_prompt, litellm_completion = load_litellm().cost_per_token(
        model=params["model"],
        prompt_tokens=prompt,
        completion_tokens=completion,
        custom_cost_per_token=custom,
    )
    assert cost_usd(params, prompt, completion) == round(litellm_prompt + litellm_completion, 10)


def test_a_model_litellm_cannot_price_costs_none_and_is_looked_up_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tokenspool.provider import cost_usd, load_litellm

    litellm = load_litellm()
    real = litellm.cost_per_token
    calls: list[str] = []

    def counted(**kwargs: Any) -> Any:
        calls.append(kwargs["model"])
        return real(**kwargs)

    monkeypatch.setattr(litellm, "cost_per_token", counted)
    unpriced = {"model": f"openai/no-such-model-{uuid.uuid4().hex}"}
    assert cost_usd(unpriced, 10, 20) is None
    assert cost_usd(unpriced, 30, 40) is None
    assert calls == [unpriced["model"]]
    priced = {"model": "gpt-4o-mini"}  # in litellm's price map: asked every time
    first, second = cost_usd(priced, 1000, 1000), cost_usd(priced, 2000, 2000)
    assert first is not None and second is not None and second > first
    assert calls == [unpriced["model"], "gpt-4o-mini", "gpt-4o-mini"]
