"""Server-sent events: framing and keep-alive comments.

Use `event(payload)` for TGI's native streams (`data:` with no space, as TGI writes it) and
`event(payload, space=True)` for the OpenAI-style `/v1` streams (`data: `, as the OpenAI API writes it;
both forms are valid SSE). `with_keepalive` interleaves `None` into an async iterator after each
`interval` of silence so the route can send a `:` comment, as TGI does every 15 s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

T = TypeVar("T")

KEEPALIVE = b":\n\n"
DONE = b"data: [DONE]\n\n"

HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def event(payload: Any, *, space: bool = False) -> bytes:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data:{' ' if space else ''}{body}\n\n".encode()


async def with_keepalive(source: AsyncIterator[T], interval: float) -> AsyncGenerator[T | None, None]:
    """Yield the items of `source`, and None whenever `interval` seconds pass without one.

    Closing this iterator closes `source` (so cleanup in `source` runs at once)."""
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            try:
                await pending
            except (asyncio.CancelledError, StopAsyncIteration):
                pass
            except Exception:  # noqa: BLE001 - the consumer is gone; nobody to report to
                pass
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
