"""`Relay`: the body of a stream job, from the upstream's deltas to the bytes the server writes.

Use it as the response body of a stream job (the app does), with the first delta and the rest that
`Core.start_stream` returned: the hot path hands it the ASGI `send` (`write_to`), Quart iterates it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import aclosing, asynccontextmanager
from typing import Any

from . import jsontext
from .drain import Deadline, Drain
from .errors import UpstreamError
from .generation import StreamDelta

log = logging.getLogger("infernet_tgi")

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Deltas = AsyncGenerator[StreamDelta, None]
_BODY = "http.response.body"


class Relay:
    """The body of a stream job: the text of each delta as UTF-8, as it arrives.

    One loop per stream and one deadline for the whole body (`deadline`, on the event loop's clock;
    a `drain.Deadline`, which the worker's `Drain` shortens at shutdown; no task, one timer). It fires
    only while the loop waits for the upstream, never while the server writes a chunk. After the first byte
    there is no error channel: a failure ends the stream (and is logged), as do the deadline that
    keeps us under the node's 60 s cut and the end of the shutdown grace period (the body then ends
    cleanly). `aclose` (Quart calls it when the response ends, also when the client went away) closes
    the upstream stream, so the upstream cancels the generation, even if
    iteration never started."""

    def __init__(
        self,
        first: StreamDelta,
        rest: Deltas,
        deadline: float,
        drain: Drain,
        on_close: Callable[[], None],
    ) -> None:
        self._first = first
        self._rest = rest
        self._deadline = deadline
        self._drain = drain
        self._on_close: Callable[[], None] | None = on_close
        self._body: AsyncGenerator[bytes, None] | None = None  # Quart's; the hot path never needs it

    async def write_to(self, send: Send) -> None:
        """Write the body as ASGI `http.response.body` messages (more to come after each), then
        close the stream. The hot path's loop: the upstream's deltas go straight to `send`, with no
        generator between them (one costs about 0.4 µs a chunk)."""
        async with self._running() as (first, rest, limit):
            if first.text:
                await send({"type": _BODY, "body": _utf8(first.text), "more_body": True})
            if first.finish_reason is not None:
                return
            while True:
                try:
                    delta = await limit.next(rest)
                except StopAsyncIteration:
                    return
                if delta.text:
                    await send({"type": _BODY, "body": _utf8(delta.text), "more_body": True})

    def __aiter__(self) -> Relay:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        if self._body is None:
            self._body = self._loop()
        return self._body.__anext__()

    async def _loop(self) -> AsyncGenerator[bytes, None]:
        """`write_to`'s loop as the generator that Quart iterates."""
        async with self._running() as (first, rest, limit):
            if first.text:
                yield _utf8(first.text)
            if first.finish_reason is not None:
                return
            while True:
                try:
                    delta = await limit.next(rest)
                except StopAsyncIteration:
                    return
                if delta.text:
                    yield _utf8(delta.text)

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[tuple[StreamDelta, Deltas, Deadline]]:
        """What both loops share: the stream deadline (started here, in the task that waits for the
        upstream: it cancels that task), the end of the stream (an upstream failure or the deadline
        ends the body cleanly, logged), and closing the upstream stream whatever happens."""
        limit: Deadline | None = None
        try:
            limit = self._drain.deadline(self._deadline)
            async with aclosing(self._rest):
                yield self._first, self._rest, limit
        except (TimeoutError, UpstreamError) as exc:
            self._ended(exc)
        finally:
            if limit is not None:
                limit.close()
            await self._finish()

    def _ended(self, exc: TimeoutError | UpstreamError) -> None:
        """Log why a stream ended before its final event."""
        if isinstance(exc, UpstreamError):
            log.warning("stream ended early: %s", exc.description)
        elif self._drain.expired:
            log.warning("stream ended: the container is shutting down (grace period over)")
        else:
            log.warning("stream stopped at the stream deadline")

    async def _finish(self) -> None:
        if self._on_close is None:
            return
        on_close, self._on_close = self._on_close, None
        try:
            await self._rest.aclose()
        finally:
            on_close()

    async def aclose(self) -> None:
        try:
            if self._body is not None:
                await self._body.aclose()
        finally:
            await self._finish()  # the loop never started: its own cleanup did not run


def _utf8(text: str) -> bytes:
    # A lone surrogate from the upstream becomes U+FFFD: the text already sent cannot be taken
    # back, and raising here would cut the stream mid-body.
    try:
        return text.encode()
    except UnicodeEncodeError:
        return jsontext.scrub(text).encode()
