"""The configured upstream, built from `Settings`: kind, URLs, pool, chat template, answer checks.

Use `build_upstream(settings, client)` with the process's one `HTTPClient` (`core.build_core` does).
One URL gives one client; several give an `UpstreamPool` of them. The result is always wrapped in a
`Guard` (chat template, constraint checks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

from ..config import Settings
from ..errors import UpstreamError
from ..metrics import Metrics
from .base import Upstream
from .client import HTTPClient
from .datacrunch import datacrunch_upstream
from .guard import Guard
from .native import NativeTGI
from .openai import OpenAIUpstream
from .pool import UpstreamPool
from .runpod import RunPodUpstream
from .vast import VastUpstream

Structured = Literal["auto", "structured_outputs", "guided"]


def build_member(settings: Settings, client: HTTPClient, url: str) -> Upstream:
    """One client of the configured kind for `url`."""
    kind = settings.upstream_kind
    structured = cast(Structured, settings.vllm_structured)
    if kind == "openai":
        return OpenAIUpstream(
            client,
            url,
            api_key=settings.api_key,
            model=settings.model,
            flavor=cast(Literal["auto", "vllm", "tgi"], settings.openai_flavor),
            structured=structured,
        )
    if kind == "runpod":
        return RunPodUpstream(
            client,
            url,
            api_key=settings.api_key,
            model=settings.model or "",
            structured=structured,
            poll_interval=settings.poll_interval,
            sync_wait=settings.timeout * 0.8,
        )
    if kind == "vast":
        return VastUpstream(
            client,
            url,
            api_key=settings.api_key,
            endpoint=settings.vast_endpoint or "",
            cost=settings.vast_cost,
            poll_interval=settings.poll_interval,
        )
    if kind == "datacrunch":
        return datacrunch_upstream(client, url, settings.model or "")
    return NativeTGI(client, url)


def build_upstream(settings: Settings, client: HTTPClient, *, metrics: Metrics | None = None) -> Guard:
    """The upstream the workflow calls; `metrics` counts a pool's failovers and members down."""
    members = [build_member(settings, client, url) for url in settings.urls]
    inner: Upstream = members[0]
    if len(members) > 1:
        inner = UpstreamPool(
            members,
            recheck_interval=settings.health_interval,
            on_failover=None if metrics is None else _count_failover(metrics),
            on_down_count=None if metrics is None else metrics.upstreams_down.set,
        )
    return Guard(inner, template=settings.chat_template)


def _count_failover(metrics: Metrics) -> Callable[[UpstreamError], None]:
    def count(exc: UpstreamError) -> None:
        metrics.failovers.labels(type(exc).__name__).inc()

    return count
