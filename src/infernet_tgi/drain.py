"""The drain: how a worker finishes its jobs when it is told to stop.

Use one `Drain` per worker process, pass it to `create_app`, and run every wait of a job under
`drain.limit(seconds)` instead of `asyncio.timeout(seconds)`. When the worker is told to stop,
`begin()` starts the grace period (`TGI_INF_SHUTDOWN_GRACE`): jobs keep running, but none waits past
its end. A wait cut by the grace period raises `TimeoutError` like its own deadline would, and
`expired` tells the two apart, so a job can answer with a JSON error and a stream can end cleanly.
`hurry()` (a second Ctrl-C) ends the grace period at once. A loop that waits and yields in turn (a
stream body) uses one `drain.deadline(when)` for all its waits instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger("infernet_tgi")


class Drain:
    """The grace period of one worker: not begun, running, or over."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._end: float | None = None  # loop time at which the grace period is over
        self._waits: set[asyncio.Timeout] = set()
        self._deadlines: set[Deadline] = set()

    @property
    def begun(self) -> bool:
        return self._end is not None

    @property
    def expired(self) -> bool:
        """True once the grace period is over: a wait cut now was cut by the shutdown."""
        return self._end is not None and asyncio.get_running_loop().time() >= self._end

    def limit(self, seconds: float) -> Limit:
        """`asyncio.timeout(seconds)`, shortened to the end of the grace period once it has begun.

        Wrap awaits only, never a `yield` of an async generator (a timeout must fire in the frame
        that awaits)."""
        return Limit(self, seconds)

    def begin(self) -> None:
        """Start the grace period (idempotent): every wait running or to come ends by its end."""
        if self._end is not None:
            return
        self._end = asyncio.get_running_loop().time() + self.grace
        log.info(
            "shutting down: finishing %d job(s) in flight within %g s",
            len(self._waits) + len(self._deadlines),
            self.grace,
        )
        self._clamp_all()

    def hurry(self) -> None:
        """End the grace period now: jobs in flight get their error, streams end."""
        self._end = asyncio.get_running_loop().time()
        log.info("shutting down now: ending %d job(s) in flight", len(self._waits) + len(self._deadlines))
        self._clamp_all()

    def deadline(self, when: float) -> Deadline:
        """A `Deadline` at loop time `when` (or the end of the grace period, if sooner) for the waits
        of the current task; `close` it when the loop ends."""
        deadline = Deadline(self, when)
        self._deadlines.add(deadline)
        if self._end is not None:
            deadline.clamp(self._end)
        return deadline

    def _clamp_all(self) -> None:
        assert self._end is not None
        for timeout in list(self._waits):
            self._clamp(timeout)
        for deadline in list(self._deadlines):
            deadline.clamp(self._end)

    def _clamp(self, timeout: asyncio.Timeout) -> None:
        if self._end is None:
            return
        when = timeout.when()
        if when is None or when > self._end:
            timeout.reschedule(self._end)


class Limit:
    """What `Drain.limit` returns: an `asyncio.Timeout` the drain knows of while it is entered (a
    class rather than a generator-based context manager: it wraps every job's upstream call)."""

    __slots__ = ("_drain", "_timeout")

    def __init__(self, drain: Drain, seconds: float) -> None:
        self._drain = drain
        self._timeout = asyncio.timeout(seconds)

    async def __aenter__(self) -> asyncio.Timeout:
        timeout = await self._timeout.__aenter__()
        self._drain._clamp(timeout)
        self._drain._waits.add(timeout)
        return timeout

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._drain._waits.discard(self._timeout)
        await self._timeout.__aexit__(exc_type, exc, traceback)  # raises TimeoutError when it fired


class Deadline:
    """One deadline over all the waits of a loop that also yields: a stream body waits for the
    upstream, then yields a chunk that the server writes, and so on.

    Its timer is armed once (not once per chunk, as an `asyncio.timeout` around each wait would be) and
    cancels the task only while the task is inside `next`, so it never fires in another frame (such
    as the server's write); a deadline that passed between waits raises at the next `next`. `next`
    raises `TimeoutError` either way. The drain shortens it to the end of its grace period."""

    def __init__(self, drain: Drain, when: float) -> None:
        self._drain = drain
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self.when = when
        self._waiting = False
        self._fired = False
        self._passed = False  # set by the timer: no loop clock read per wait
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(when, self._fire)

    async def next(self, iterator: AsyncIterator[T]) -> T:
        """`anext(iterator)` within the deadline (StopAsyncIteration passes through)."""
        if self._passed:
            raise TimeoutError()
        self._waiting = True
        try:
            return await anext(iterator)
        except asyncio.CancelledError:
            if not self._fired:
                raise
            self._fired = False
            if self._task.uncancel() > 0:
                raise  # also cancelled from elsewhere: that wins
            raise TimeoutError() from None
        finally:
            self._waiting = False

    def clamp(self, end: float) -> None:
        """Move the deadline to `end` if that is sooner."""
        if end < self.when:
            self.when = end
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(end, self._fire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._drain._deadlines.discard(self)

    def _fire(self) -> None:
        self._timer = None
        self._passed = True
        if self._waiting and not self._fired:
            self._fired = True
            self._task.cancel()
