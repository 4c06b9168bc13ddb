"""Settings: the environment, read once at startup into one frozen object.

Use `Settings.from_env(os.environ)` in the launcher and pass the result down; nothing else reads the
environment. The three documented variables keep the meaning Ritual's service gives them:

* `TGI_INF_WORKFLOW_POSITIONAL_ARGS`: JSON list `[server_url, timeout, headers, cookies]` (1-4 items).
* `TGI_INF_WORKFLOW_KW_ARGS`: JSON object; `retry_params` plus constructor keywords (`timeout`,
  `headers`, `cookies`) and default generation parameters in TGI names.
* `TGI_INF_TOKEN`: sent upstream as `Authorization: Bearer <token>`; always a string.

Unlike the reference, a malformed value stops startup with a `ConfigError` naming the variable.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from .attestation import Attester
from .chat import ChatTemplate
from .errors import ConfigError
from .protocol import GenerationParameters
from .redaction import redact
from .retry import RetryParams

POSITIONAL = "TGI_INF_WORKFLOW_POSITIONAL_ARGS"
KEYWORDS = "TGI_INF_WORKFLOW_KW_ARGS"
_CONSTRUCTOR_KEYS = ("server_url", "timeout", "headers", "cookies")
KINDS = ("tgi", "openai", "runpod", "vast", "datacrunch")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
RUNPOD_API = "https://api.runpod.ai/v2/"
VAST_ROUTER = "https://run.vast.ai"


@dataclass(frozen=True)
class Settings:
    """Everything the container needs to know, validated. Defaults are the documented ones."""

    server_url: str = "http://127.0.0.1:8080"
    timeout: float = 30.0
    headers: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)
    retry: RetryParams = field(default_factory=RetryParams)
    defaults: GenerationParameters = field(default_factory=GenerationParameters)
    token: str | None = None
    bearer: str | None = None
    max_new_tokens_limit: int = 2048
    default_max_new_tokens: int = 20
    max_prompt_chars: int = 65536
    max_body_bytes: int = 1 << 20
    job_deadline: float = 170.0
    stream_deadline: float = 55.0
    max_connections: int = 1024
    host: str = "127.0.0.1"
    port: int = 3000
    workers: int = 1
    backlog: int = 4096
    shutdown_grace: float = 170.0
    log_level: str = "INFO"
    prompt_as_chat: bool = False
    upstream_kind: str = "tgi"
    upstream_urls: tuple[str, ...] = ()
    api_key: str | None = None
    model: str | None = None
    openai_flavor: str = "auto"
    vllm_structured: str = "auto"
    chat_template: ChatTemplate | None = None
    vast_endpoint: str | None = None
    vast_cost: float | None = None
    poll_interval: float = 0.5
    health_interval: float = 5.0
    attester: Attester | None = None  # TGI_INF_ATTESTATION_KEY / _CHAIN_ID (see attestation.py)

    @property
    def urls(self) -> tuple[str, ...]:
        """The upstream base URLs: TGI_INF_UPSTREAM_URLS, else the positional server_url."""
        return self.upstream_urls or (self.server_url,)

    def upstream_headers(self) -> dict[str, str]:
        """Headers for every upstream call; the token (or, except for Vast, whose key goes in the
        route request, the API key) wins over a configured Authorization."""
        headers = dict(self.headers)
        key = self.api_key if self.upstream_kind != "vast" else None
        if key or self.token:
            headers["Authorization"] = f"Bearer {key or self.token}"
        return headers

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Parse and validate; raise `ConfigError` naming the variable and the problem."""
        constructor = _constructor_args(env)
        keywords = _json(env, KEYWORDS, dict) or {}
        retry = _retry(keywords.pop("retry_params", None))
        for key in _CONSTRUCTOR_KEYS:
            if key in keywords:
                if key in constructor:
                    raise ConfigError(f"{KEYWORDS}: `{key}` is already given in {POSITIONAL}")
                constructor[key] = keywords.pop(key)
        try:
            defaults = GenerationParameters.model_validate(keywords)
        except ValidationError as exc:
            raise ConfigError(f"{KEYWORDS}: {_first_error(exc)}") from exc
        problem = defaults.tgi_rule_violation(streaming=False)
        if problem:
            raise ConfigError(f"{KEYWORDS}: {problem}")

        values: dict[str, Any] = {
            "server_url": _url(constructor.get("server_url", cls.server_url)),
            "timeout": _positive(constructor.get("timeout", cls.timeout), f"{POSITIONAL} timeout"),
            "headers": _str_map(constructor.get("headers") or {}, "headers"),
            "cookies": _str_map(constructor.get("cookies") or {}, "cookies"),
            "retry": retry,
            "defaults": defaults,
            "token": _secret(env, "TGI_INF_TOKEN"),
            "bearer": _secret(env, "TGI_INF_BEARER"),
            "host": env.get("TGI_INF_HOST", cls.host).strip() or cls.host,
            "log_level": _log_level(env),
            "prompt_as_chat": _flag(env, "TGI_INF_PROMPT_AS_CHAT"),
        }
        for name, attr in (
            ("TGI_INF_MAX_NEW_TOKENS", "max_new_tokens_limit"),
            ("TGI_INF_DEFAULT_MAX_NEW_TOKENS", "default_max_new_tokens"),
            ("TGI_INF_MAX_PROMPT_CHARS", "max_prompt_chars"),
            ("TGI_INF_MAX_BODY_BYTES", "max_body_bytes"),
            ("TGI_INF_MAX_CONNECTIONS", "max_connections"),
            ("TGI_INF_BACKLOG", "backlog"),
        ):
            if name in env:
                values[attr] = _int(env[name], name)
        if "TGI_INF_PORT" in env:
            values["port"] = port_number(env["TGI_INF_PORT"], "TGI_INF_PORT")
        if env.get("TGI_INF_WORKERS", "").strip():
            values["workers"] = worker_count(env["TGI_INF_WORKERS"], "TGI_INF_WORKERS")
        for name, attr in (
            ("TGI_INF_JOB_DEADLINE", "job_deadline"),
            ("TGI_INF_STREAM_DEADLINE", "stream_deadline"),
            ("TGI_INF_SHUTDOWN_GRACE", "shutdown_grace"),
        ):
            if name in env:
                values[attr] = _positive(_number(env[name], name), name)
        values.setdefault("shutdown_grace", values.get("job_deadline", cls.job_deadline))
        values.update(_upstream(env))
        values["attester"] = Attester.from_env(env)
        settings = cls(**values)
        if settings.default_max_new_tokens > settings.max_new_tokens_limit:
            raise ConfigError(
                f"TGI_INF_DEFAULT_MAX_NEW_TOKENS: {settings.default_max_new_tokens} is above "
                f"TGI_INF_MAX_NEW_TOKENS ({settings.max_new_tokens_limit}), so every job would be refused"
            )
        ceiling = settings.max_new_tokens_limit
        if defaults.max_new_tokens is not None and defaults.max_new_tokens > ceiling:
            raise ConfigError(
                f"{KEYWORDS}: max_new_tokens {defaults.max_new_tokens} is above "
                f"TGI_INF_MAX_NEW_TOKENS ({ceiling})"
            )
        return settings


def _upstream(env: Mapping[str, str]) -> dict[str, Any]:
    """The TGI_INF_* settings that choose and reach the upstream engine."""
    kind = _choice(env, "TGI_INF_UPSTREAM_KIND", KINDS)
    values: dict[str, Any] = {
        "upstream_kind": kind,
        "api_key": _secret(env, "TGI_INF_API_KEY"),
        "model": env.get("TGI_INF_MODEL") or None,
        "openai_flavor": _choice(env, "TGI_INF_OPENAI_FLAVOR", ("auto", "vllm", "tgi")),
        "vllm_structured": _choice(env, "TGI_INF_VLLM_STRUCTURED", ("auto", "structured_outputs", "guided")),
        "vast_endpoint": env.get("TGI_INF_VAST_ENDPOINT") or None,
    }
    urls = [u.strip() for u in env.get("TGI_INF_UPSTREAM_URLS", "").split(",") if u.strip()]
    runpod_endpoint = env.get("TGI_INF_RUNPOD_ENDPOINT", "").strip()
    if not urls and kind == "runpod" and runpod_endpoint:
        urls = [RUNPOD_API + runpod_endpoint]
    if not urls and kind == "vast":
        urls = [VAST_ROUTER]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"TGI_INF_UPSTREAM_URLS: {redact(url)!r} is not an http(s) URL")
        _check_port(url, "TGI_INF_UPSTREAM_URLS")
    values["upstream_urls"] = tuple(u.rstrip("/") for u in urls)
    if env.get("TGI_INF_CHAT_TEMPLATE", "").strip():
        values["chat_template"] = ChatTemplate.load(env["TGI_INF_CHAT_TEMPLATE"])
    for name, attr in (
        ("TGI_INF_POLL_INTERVAL", "poll_interval"),
        ("TGI_INF_HEALTH_INTERVAL", "health_interval"),
    ):
        if env.get(name, "").strip():
            values[attr] = _positive(_number(env[name], name), name)
    if env.get("TGI_INF_VAST_COST", "").strip():
        cost = _number(env["TGI_INF_VAST_COST"], "TGI_INF_VAST_COST")
        if cost <= 0:
            raise ConfigError(f"TGI_INF_VAST_COST: must be a positive workload, got {cost:g}")
        values["vast_cost"] = cost
    needs = {
        "runpod": [("TGI_INF_MODEL", values["model"])],
        "datacrunch": [("TGI_INF_MODEL", values["model"])],
        "vast": [("TGI_INF_VAST_ENDPOINT", values["vast_endpoint"])],
    }.get(kind, [])
    if kind == "runpod" and not urls:
        needs.append(("TGI_INF_RUNPOD_ENDPOINT (or TGI_INF_UPSTREAM_URLS)", None))
    for name, value in needs:
        if value is None:
            raise ConfigError(f"{name} is required when TGI_INF_UPSTREAM_KIND={kind}")
    return values


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or allowed[0]
    if value not in allowed:
        raise ConfigError(f"{name}: expected one of {', '.join(allowed)}, got {env[name]!r}")
    return value


def _constructor_args(env: Mapping[str, str]) -> dict[str, Any]:
    items = _json(env, POSITIONAL, list)
    if items is None:
        return {}
    if not 1 <= len(items) <= 4:
        raise ConfigError(
            f"{POSITIONAL}: expected [server_url, timeout, headers, cookies] (1 to 4 items), got {len(items)}"
        )
    return dict(zip(_CONSTRUCTOR_KEYS, items, strict=False))


def _json(env: Mapping[str, str], name: str, kind: type) -> Any:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}: not valid JSON ({exc.msg} at position {exc.pos})") from exc
    if not isinstance(value, kind):
        expected = "a JSON list" if kind is list else "a JSON object"
        raise ConfigError(f"{name}: expected {expected}, got {type(value).__name__}")
    return value


def _retry(value: Any) -> RetryParams:
    if value is None:
        return RetryParams()
    if not isinstance(value, dict):
        raise ConfigError(f"{KEYWORDS}: retry_params must be an object")
    try:
        return RetryParams.model_validate(value)
    except ValidationError as exc:
        raise ConfigError(f"{KEYWORDS}: retry_params {_first_error(exc)}") from exc


def _url(value: Any) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = redact(value) if isinstance(value, str) else value
        raise ConfigError(f"{POSITIONAL}: server_url must be an http(s) URL, got {shown!r}")
    _check_port(value, f"{POSITIONAL} server_url")
    return str(value).rstrip("/")


def _check_port(url: str, name: str) -> None:
    """A port, if the URL gives one, in 1-65535: checked now, not at the first job."""
    try:
        port = urlsplit(url).port
    except ValueError as exc:
        raise ConfigError(f"{name}: {redact(url)!r} has a port outside 1-65535") from exc
    if port == 0:
        raise ConfigError(f"{name}: {redact(url)!r} has a port outside 1-65535")


def _str_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"{POSITIONAL}/{KEYWORDS}: {what} must be an object of strings")
    for key, item in value.items():
        if _unsendable(key) or _unsendable(item):
            raise ConfigError(
                f"{POSITIONAL}/{KEYWORDS}: {what} `{key.strip()}` contains a line break or control "
                "character (not allowed in an HTTP header)"
            )
    return dict(value)


def _unsendable(text: str) -> bool:
    """True when `text` cannot go into an HTTP header value: control characters or non-Latin-1."""
    return any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F or ord(c) > 0xFF for c in text)


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """A token sent in a header; refused now if it cannot be sent (it would fail every job later)."""
    value = env.get(name) or None
    if value is not None and _unsendable(value):
        raise ConfigError(f"{name}: contains a line break or control character (not allowed in a header)")
    return value


def _log_level(env: Mapping[str, str]) -> str:
    raw = env.get("TGI_INF_LOG_LEVEL", "").strip().upper() or "INFO"
    if raw not in LOG_LEVELS:
        raise ConfigError(
            f"TGI_INF_LOG_LEVEL: expected one of {', '.join(LOG_LEVELS)}, got {env['TGI_INF_LOG_LEVEL']!r}"
        )
    return raw


def port_number(raw: str | int, name: str) -> int:
    """A TCP port, 0-65535 (0 asks the OS for a free one)."""
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from exc
    if not 0 <= value <= 65535:
        raise ConfigError(f"{name}: port must be in 0-65535, got {value}")
    return value


def worker_count(raw: str | int, name: str) -> int:
    """A positive number of worker processes, or `auto`: as many as the CPUs this process may use."""
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return usable_cpus()
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: expected a positive integer or auto, got {raw!r}") from exc
    if value < 1:
        raise ConfigError(f"{name}: at least 1 worker is needed, got {value}")
    return value


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity, lowered by a cgroup CPU quota (`docker --cpus`)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _cgroup_quota() -> float | None:
    """The CPU quota in CPUs from cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`); None when unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as limits:  # "<quota> <period>" or "max <period>"
            quota, period = limits.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as quota_file:
            quota_us = int(quota_file.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as period_file:
            period_us = int(period_file.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}: expected true or false, got {env[name]!r}")


def _number(raw: str, name: str) -> float:
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from exc


def _int(raw: str, name: str) -> int:
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from exc
    if value <= 0:
        raise ConfigError(f"{name}: must be positive, got {value}")
    return value


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{name}: must be a positive number of seconds, got {value!r}")
    return float(value)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    if err["type"] == "extra_forbidden":
        return f"unknown parameter `{where}`"
    return f"`{where}`: {err['msg']}"
