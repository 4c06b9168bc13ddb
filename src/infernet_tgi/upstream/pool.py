"""Several upstream URLs behind one `Upstream`: load spread round-robin, failover, health checks.

Use `UpstreamPool` when `TGI_INF_UPSTREAM_URLS` lists more than one URL (the factory does). Within one
attempt of the workflow's retry policy, a call goes to the next healthy member; if that member cannot
be reached or answers 503 (`UpstreamUnavailableError`), it is marked down and the call moves on to the
next one, and on 429 or a TGI shard error it moves on without marking. A down member is skipped until
its health check (`health()`) passes again; checks run in the background, at most once
per `recheck_interval`. When every member is down, all are tried anyway: a real request is the
freshest health check there is. Streams fail over only before their first event.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from typing import Any

from ..errors import (
    UpstreamError,
    UpstreamOverloadedError,
    UpstreamShardError,
    UpstreamUnavailableError,
)
from .base import Generation, GenerationRequest, StreamDelta, Upstream

log = logging.getLogger("infernet_tgi.pool")

_MOVE_ON = (UpstreamOverloadedError, UpstreamShardError)


class UpstreamPool:
    """Members of one upstream kind, used in turn."""

    def __init__(
        self,
        members: Sequence[Upstream],
        *,
        recheck_interval: float = 5.0,
        probe_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_failover: Callable[[UpstreamError], None] | None = None,
        on_down_count: Callable[[int], None] | None = None,
    ) -> None:
        if not members:
            raise ValueError("a pool needs at least one member")
        self._members = list(members)
        self._recheck = recheck_interval
        self._probe_timeout = probe_timeout
        self._clock = clock
        self._next = 0
        self._down: dict[int, float] = {}  # member index -> when its next health check is due
        self._probes: dict[int, asyncio.Task[None]] = {}
        self._on_failover = on_failover
        self._on_down_count = on_down_count

    @property
    def url(self) -> str:
        return ", ".join(m.url for m in self._members)

    @property
    def members(self) -> list[Upstream]:
        return list(self._members)

    def is_down(self, index: int) -> bool:
        return index in self._down

    def _order(self) -> list[int]:
        """Healthy members starting at the round-robin cursor; all of them when none is healthy."""
        self._start_due_probes()
        n = len(self._members)
        start = self._next
        self._next = (self._next + 1) % n
        ring = [(start + k) % n for k in range(n)]
        healthy = [i for i in ring if i not in self._down]
        return healthy or ring

    def _moved_on(self, exc: UpstreamError) -> None:
        if self._on_failover is not None:
            self._on_failover(exc)

    def _mark_down(self, index: int, exc: UpstreamError) -> None:
        if index not in self._down:
            log.warning("upstream %s is down, skipped until healthy: %s", self._members[index].url, exc)
        self._down[index] = self._clock() + self._recheck
        if self._on_down_count is not None:
            self._on_down_count(len(self._down))

    def _mark_up(self, index: int) -> None:
        if self._down.pop(index, None) is not None:
            log.info("upstream %s is healthy again", self._members[index].url)
            if self._on_down_count is not None:
                self._on_down_count(len(self._down))

    def _start_due_probes(self) -> None:
        now = self._clock()
        for index, due in list(self._down.items()):
            if due <= now and index not in self._probes:
                task = asyncio.get_running_loop().create_task(self._probe(index))
                self._probes[index] = task
                task.add_done_callback(functools.partial(self._forget_probe, index))

    def _forget_probe(self, index: int, _task: asyncio.Task[None]) -> None:
        self._probes.pop(index, None)

    async def _probe(self, index: int) -> None:
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self._members[index].health()
        except (UpstreamError, TimeoutError):
            if index in self._down:
                self._down[index] = self._clock() + self._recheck
            return
        self._mark_up(index)

    async def check_now(self) -> None:
        """Run every down member's health check now (tests, and an operator's manual nudge)."""
        for index in list(self._down):
            self._down[index] = self._clock()
        self._start_due_probes()
        await asyncio.gather(*list(self._probes.values()), return_exceptions=True)

    async def generate(self, request: GenerationRequest) -> Generation:
        last: UpstreamError | None = None
        for index in self._order():
            try:
                generation = await self._members[index].generate(request)
            except UpstreamUnavailableError as exc:
                self._mark_down(index, exc)
                self._moved_on(exc)
                last = exc
                continue
            except _MOVE_ON as exc:
                self._moved_on(exc)
                last = exc
                continue
            self._mark_up(index)
            return generation
        assert last is not None
        raise last

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamDelta, None]:
        last: UpstreamError | None = None
        for index in self._order():
            events = self._members[index].stream(request)
            try:
                first = await anext(events)
            except StopAsyncIteration:
                return
            except UpstreamUnavailableError as exc:
                await events.aclose()
                self._mark_down(index, exc)
                self._moved_on(exc)
                last = exc
                continue
            except _MOVE_ON as exc:
                await events.aclose()
                self._moved_on(exc)
                last = exc
                continue
            except BaseException:
                await events.aclose()
                raise
            self._mark_up(index)
            async with aclosing(events):
                yield first
                async for delta in events:
                    yield delta
            return
        assert last is not None
        raise last

    async def info(self) -> dict[str, Any]:
        """The first healthy member's info."""
        last: UpstreamError | None = None
        for index in self._order():
            try:
                return await self._members[index].info()
            except UpstreamError as exc:
                last = exc
        assert last is not None
        raise last

    async def health(self) -> None:
        """Raises unless some member is healthy."""
        if len(self._down) == len(self._members):
            raise UpstreamUnavailableError(f"every upstream of the pool is down ({self.url})")

    async def aclose(self) -> None:
        """Stop the background health checks."""
        for task in list(self._probes.values()):
            task.cancel()
        await asyncio.gather(*list(self._probes.values()), return_exceptions=True)

