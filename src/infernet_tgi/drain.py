"""The drain: how a worker finishes its jobs when it is told to stop.

Use one `Drain` per worker process, pass it to `create_app`, and run every wait of a job under
`drain.limit(seconds)` instead of `asyncio.timeout(seconds)`. When the worker is told to stop,
`begin()` starts the grace period (`TGI_INF_SHUTDOWN_GRACE`): jobs keep running, but none waits past
its end. A wait cut by the grace period raises `TimeoutError` like its own deadline would, and
`expired` tells the two apart, so a job can answer with a JSON error and a stream can end cleanly.
`hurry()` (a second Ctrl-C) ends the grace period at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

log = logging.getLogger("infernet_tgi")


class Drain:
    """The grace period of one worker: not begun, running, or over."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._end: float | None = None  # loop time at which the grace period is over
        self._waits: set[asyncio.Timeout] = set()

    @property
    def begun(self) -> bool:
        return self._end is not None

    @property
    def expired(self) -> bool:
        """True once the grace period is over: a wait cut now was cut by the shutdown."""
        return self._end is not None and asyncio.get_running_loop().time() >= self._end

    @asynccontextmanager
    async def limit(self, seconds: float) -> AsyncIterator[asyncio.Timeout]:
        """`asyncio.timeout(seconds)`, shortened to the end of the grace period once it has begun.

        Wrap awaits only, never a `yield` of an async generator (a timeout must fire in the frame
        that awaits)."""
        async with asyncio.timeout(seconds) as timeout:
            self._clamp(timeout)
            self._waits.add(timeout)
            try:
                yield timeout
            finally:
                self._waits.discard(timeout)

    def begin(self) -> None:
        """Start the grace period (idempotent): every wait running or to come ends by its end."""
        if self._end is not None:
            return
        self._end = asyncio.get_running_loop().time() + self.grace
        log.info("shutting down: finishing %d job(s) in flight within %g s", len(self._waits), self.grace)
        for timeout in list(self._waits):
            self._clamp(timeout)

    def hurry(self) -> None:
        """End the grace period now: jobs in flight get their error, streams end."""
        self._end = asyncio.get_running_loop().time()
        log.info("shutting down now: ending %d job(s) in flight", len(self._waits))
        for timeout in list(self._waits):
            self._clamp(timeout)

    def _clamp(self, timeout: asyncio.Timeout) -> None:
        if self._end is None:
            return
        when = timeout.when()
        if when is None or when > self._end:
            timeout.reschedule(self._end)
