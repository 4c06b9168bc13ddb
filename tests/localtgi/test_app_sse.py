"""SSE framing and keep-alive helpers (no server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from localtgi import sse


def test_event_framing() -> None:
    assert sse.event({"a": "é"}) == 'data:{"a":"é"}\n\n'.encode()
    assert sse.event({"a": 1}, space=True) == b'data: {"a":1}\n\n'
    assert sse.DONE == b"data: [DONE]\n\n" and sse.KEEPALIVE == b":\n\n"


async def test_keepalive_fills_silence_and_closing_reaches_the_source() -> None:
    closed = asyncio.Event()

    async def slow() -> AsyncIterator[int]:
        try:
            yield 1
            await asyncio.sleep(0.35)
            yield 2
            await asyncio.sleep(10)
            yield 3
        finally:
            closed.set()

    stream = sse.with_keepalive(slow(), 0.1)
    assert await anext(stream) == 1
    silence = 0
    while (item := await anext(stream)) is None:
        silence += 1
    assert item == 2 and 1 <= silence <= 4  # ~3 keep-alives in the 0.35 s gap
    assert await anext(stream) is None
    await stream.aclose()  # the consumer went away while the source was waiting
    assert closed.is_set()


async def test_keepalive_passes_through_end_and_errors() -> None:
    async def short() -> AsyncIterator[int]:
        yield 1
        raise ValueError("boom")

    stream = sse.with_keepalive(short(), 5)
    assert await anext(stream) == 1
    try:
        await anext(stream)
    except ValueError as exc:
        assert str(exc) == "boom"
    else:
        raise AssertionError("the source's error was swallowed")
