"""`Connection`: one keep-alive HTTP/1.1 connection of `client.HTTPClient`, as an asyncio protocol
whose answers httptools parses; and `Headers`, an answer's headers.

Use them only through `HTTPClient`. Failures surface as `OSError`, `TimeoutError`,
`httptools.HttpParserError` or `http.ConnectionClosedError`, which the client translates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any, cast

import httptools

from .http import ConnectionClosedError

HIGH_WATER = 1 << 20  # bytes of body buffered before reading from the socket pauses


class Headers(Mapping[str, str]):
    """Response headers, looked up case-insensitively (the first value of a repeated name).

    A lookup scans the few pairs an answer has; the name -> value table is built only when the
    headers are iterated (most answers are read for one header, or none)."""

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self._pairs = pairs
        self._table: dict[str, str] | None = None

    def __getitem__(self, name: str) -> str:
        wanted = name.lower().encode("latin-1")
        for key, value in self._pairs:
            if key.lower() == wanted:
                return value.decode("latin-1")
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:  # no KeyError raised on the usual miss
        wanted = name.lower().encode("latin-1")
        for key, value in self._pairs:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return default

    def _map(self) -> dict[str, str]:
        if self._table is None:
            table: dict[str, str] = {}
            for key, value in self._pairs:
                table.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
            self._table = table
        return self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self._map())

    def __len__(self) -> int:
        return len(self._map())


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection of the client, reading one response at a time.

    `send` writes a request; the httptools callbacks fill in the status, headers and body chunks;
    `wait` returns when more arrived (or raises the failure); `take` hands over the body so far.
    A read timeout runs from `send` to the end of the answer, counted from the last bytes received."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, str, int], timeout: float) -> None:
        self.key = key
        self._loop = loop
        self._timeout = timeout
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = True  # in the client's count of open connections until discarded
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.header_pairs: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.until_eof = False
        self.tainted = False  # bytes came after the answer: not reusable
        self.received = 0  # response bytes, to tell a stale keep-alive connection from a failure
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._paused = False
        self.active = False

    # --- one exchange ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write a whole request and start its read timeout."""
        if self.transport is None or self.closed:
            raise ConnectionClosedError("connection closed before the request was sent")
        self._parser = httptools.HttpResponseParser(self)
        self.active = True
        self._last = self._loop.time()
        self._timer = self._loop.call_at(self._last + self._timeout, self._check_timeout)
        self.transport.write(data)

    async def wait(self) -> None:
        """Until more of the response arrives, it ends, or it fails (raised)."""
        if self.error is not None:
            raise self.error
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def take(self) -> bytes:
        """The body bytes that have arrived since the last call, in one piece."""
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def done(self) -> None:
        """The exchange is over: stop its timer (the connection may be reused)."""
        self.active = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.done()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not (self.closed or self.tainted or self.error)

    def recycle(self) -> None:
        self._reset()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _check_timeout(self) -> None:
        # One timer per exchange, moved on lazily: no timer work per chunk received.
        self._timer = None
        if not self.active:
            return
        due = self._last + self._timeout
        if self._loop.time() >= due:
            self._fail(TimeoutError())
            self.close()
        else:
            self._timer = self._loop.call_at(due, self._check_timeout)

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio's subclasses

    def data_received(self, data: bytes) -> None:
        if not self.active:  # bytes nobody asked for: the connection cannot be trusted any more
            self.close()
            return
        self._last = self._loop.time()
        self.received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.active and not self.complete:
            if self.until_eof and self.headers_done and exc is None:
                self.complete = True  # a body delimited by the end of the connection
                self._wake()
            else:
                self._fail(ConnectionClosedError(str(exc) if exc else "the upstream closed the connection"))
        self.done()

    def pause_writing(self) -> None:  # requests are small; nothing to throttle
        pass

    def resume_writing(self) -> None:
        pass

    # --- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request: the connection cannot be trusted
            self.tainted = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.tainted:
            self.header_pairs.append((name, value))

    def on_headers_complete(self) -> None:
        if self.tainted:
            return
        self.status = self._parser.get_status_code()
        self.headers_done = True
        chunked = length = False
        for name, value in self.header_pairs:
            lowered = name.lower()
            if lowered == b"content-length":
                length = True
            elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        self.until_eof = not chunked and not length and self.status not in (204, 304)
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.tainted:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True  # bounded memory: the reader catches up first
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.tainted:
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self.done()
        self._wake()
