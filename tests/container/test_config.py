"""The TGI_INF_* variables mean what the seed documentation says; malformed ones stop startup."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from infernet_tgi.config import Settings
from infernet_tgi.errors import ConfigError

SEED_KW = (
    '{"retry_params": {"tries": 3, "delay": 1, "backoff": 2, "max_delay": 10, "jitter": [0.5, 1.5]}, '
    '"max_new_tokens": 30, "temperature": 0.01}'
)


def test_seed_configuration() -> None:
    settings = Settings.from_env(
        {
            "TGI_INF_TOKEN": "YOUR_TOKEN_HERE",
            "TGI_INF_WORKFLOW_POSITIONAL_ARGS": '["http://tgi:80", 30]',
            "TGI_INF_WORKFLOW_KW_ARGS": SEED_KW,
        }
    )
    assert (settings.server_url, settings.timeout) == ("http://tgi:80", 30.0)
    assert (settings.retry.tries, settings.retry.delay, settings.retry.max_delay) == (3, 1.0, 10.0)
    assert settings.retry.jitter == (0.5, 1.5)
    assert settings.defaults.tgi_json() == {"max_new_tokens": 30, "temperature": 0.01}
    assert settings.upstream_headers() == {"Authorization": "Bearer YOUR_TOKEN_HERE"}


def test_defaults_without_env() -> None:
    settings = Settings.from_env({})
    assert settings.server_url == "http://127.0.0.1:8080"
    assert settings.retry.tries == 3 and settings.defaults.tgi_json() == {}
    assert settings.token is None and settings.upstream_headers() == {}


def test_numeric_token_stays_a_string() -> None:
    settings = Settings.from_env({"TGI_INF_TOKEN": "12345"})
    assert settings.token == "12345"
    assert settings.upstream_headers()["Authorization"] == "Bearer 12345"


def test_positional_headers_and_cookies() -> None:
    settings = Settings.from_env(
        {"TGI_INF_WORKFLOW_POSITIONAL_ARGS": '["https://h/", 5, {"X-A": "1"}, {"c": "v"}]'}
    )
    assert settings.server_url == "https://h"
    assert dict(settings.headers) == {"X-A": "1"} and dict(settings.cookies) == {"c": "v"}


def test_constructor_keywords_in_kw_args() -> None:
    settings = Settings.from_env(
        {"TGI_INF_WORKFLOW_KW_ARGS": '{"timeout": 9, "headers": {"X-B": "2"}, "stop_sequences": ["\\n"]}'}
    )
    assert settings.timeout == 9.0 and dict(settings.headers) == {"X-B": "2"}
    assert settings.defaults.tgi_json() == {"stop": ["\n"]}


@pytest.mark.parametrize(
    "env,fragment",
    [
        (
            {"TGI_INF_WORKFLOW_POSITIONAL_ARGS": "http://host:8080"},
            "TGI_INF_WORKFLOW_POSITIONAL_ARGS: not valid JSON",
        ),
        ({"TGI_INF_WORKFLOW_POSITIONAL_ARGS": '{"a": 1}'}, "expected a JSON list"),
        ({"TGI_INF_WORKFLOW_POSITIONAL_ARGS": "[]"}, "1 to 4 items"),
        ({"TGI_INF_WORKFLOW_POSITIONAL_ARGS": '["ftp://x", 3]'}, "server_url must be an http(s) URL"),
        ({"TGI_INF_WORKFLOW_POSITIONAL_ARGS": '["http://x", -1]'}, "must be a positive number"),
        ({"TGI_INF_WORKFLOW_POSITIONAL_ARGS": '["http://x", 3, ["h"]]'}, "headers must be an object"),
        ({"TGI_INF_WORKFLOW_KW_ARGS": "[1]"}, "TGI_INF_WORKFLOW_KW_ARGS: expected a JSON object"),
        ({"TGI_INF_WORKFLOW_KW_ARGS": "{max_new_tokens: 3}"}, "TGI_INF_WORKFLOW_KW_ARGS: not valid JSON"),
        ({"TGI_INF_WORKFLOW_KW_ARGS": '{"temprature": 1}'}, "unknown parameter `temprature`"),
        ({"TGI_INF_WORKFLOW_KW_ARGS": '{"temperature": 0}'}, "`temperature` must be strictly positive"),
        ({"TGI_INF_WORKFLOW_KW_ARGS": '{"top_p": 1.0}'}, "`top_p` must be > 0.0 and < 1.0"),
        ({"TGI_INF_WORKFLOW_KW_ARGS": '{"retry_params": {"tries": 0}}'}, "retry_params `tries`"),
        ({"TGI_INF_WORKFLOW_KW_ARGS": '{"retry_params": {"tires": 3}}'}, "retry_params unknown parameter"),
        ({"TGI_INF_WORKFLOW_KW_ARGS": '{"retry_params": 3}'}, "retry_params must be an object"),
        ({"TGI_INF_WORKFLOW_KW_ARGS": '{"max_new_tokens": 99999}'}, "above TGI_INF_MAX_NEW_TOKENS"),
        (
            {
                "TGI_INF_WORKFLOW_POSITIONAL_ARGS": '["http://x", 3]',
                "TGI_INF_WORKFLOW_KW_ARGS": '{"timeout": 3}',
            },
            "`timeout` is already given",
        ),
        ({"TGI_INF_PORT": "abc"}, "TGI_INF_PORT: expected an integer"),
        ({"TGI_INF_JOB_DEADLINE": "-1"}, "TGI_INF_JOB_DEADLINE: must be a positive"),
    ],
)
def test_malformed_values_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert fragment in str(info.value)


def test_cli_exits_2_with_the_message() -> None:
    env = {**os.environ, "TGI_INF_WORKFLOW_KW_ARGS": '{"retry_params": {"tries": "many"}}'}
    done = subprocess.run(
        [sys.executable, "-m", "infernet_tgi", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "configuration error: TGI_INF_WORKFLOW_KW_ARGS: retry_params `tries`" in done.stderr


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.timeout = 1  # type: ignore[misc]
    assert json.loads(json.dumps(settings.defaults.tgi_json())) == {}


def test_prompt_as_chat_flag() -> None:
    assert Settings.from_env({}).prompt_as_chat is False
    assert Settings.from_env({"TGI_INF_PROMPT_AS_CHAT": "true"}).prompt_as_chat is True
    with pytest.raises(ConfigError, match="TGI_INF_PROMPT_AS_CHAT: expected true or false"):
        Settings.from_env({"TGI_INF_PROMPT_AS_CHAT": "maybe"})
