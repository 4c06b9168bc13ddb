"""`HTTPClient`: the process's one HTTP/1.1 client, keep-alive connections on asyncio protocols with
responses parsed by httptools (the C parser uvicorn uses).

Use one per process (the core's factory opens it, its `aclose` closes it) and hand it to every upstream
client. It offers only what the upstream clients use: `request` (a whole `Reply`) and `stream` (a
`Body` read chunk by chunk). Measured here it costs a fraction of aiohttp's CPU per request (aiohttp was
a third of a job's CPU, httpx more again): a request is one write, a response one parser pass, and the
read timeout is one timer per request instead of one per chunk.

Connections are kept per scheme, host and port (https verified with the system's CA store); at most
`max_connections` are open at once, and a request waits for a free one. An idle connection is reused
for 30 s (a host's resolved addresses for 60 s); if the upstream closed it meanwhile and the request
gets no byte back, it is sent once more on a new connection. No redirects are followed, no compression
is asked for, user:password in a URL becomes Basic authorization. Every failure without an HTTP answer
leaves as an `UpstreamError` (through `http.transport_error`); HTTP statuses are the caller's to judge.
"""

from __future__ import annotations

import asyncio
import base64
import json as jsonlib
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httptools

from .connection import HIGH_WATER, Connection, Headers
from .http import ConnectionClosedError, ConnectTimeoutError, transport_error

KEEP_IDLE = 30.0  # seconds an idle connection is kept for reuse
DNS_TTL = 60.0  # seconds a host's resolved addresses are reused for new connections
# Seconds a stream reader waits, after the final event, for the end of the HTTP body (servers send it
# at once) so that the connection can be reused (`Body.finish`).
FINISH_WAIT = 1.0
_URL_CACHE = 256
_PATH_SAFE = "/%:@!$&'()*+,;=-._~?"  # kept as written; anything else (spaces, non-ASCII) percent-encoded


@dataclass(frozen=True)
class Reply:
    """A whole answer: status, headers (case-insensitive) and the raw body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; raises ValueError when it is not."""
        return jsonlib.loads(self.body)


@dataclass(frozen=True)
class _Target:
    """What a URL means for the wire: the pool it uses and the request line's parts."""

    key: tuple[str, str, int]
    path: bytes
    head: bytes  # Host and, for URLs with credentials, Authorization header lines


class Body:
    """An answer whose body is read as it arrives (SSE needs each chunk at once)."""

    def __init__(self, connection: Connection, url: str, client: HTTPClient) -> None:
        self._connection: Connection | None = connection
        self._url = url
        self._client = client
        self.status = connection.status
        self.headers: Mapping[str, str] = Headers(connection.header_pairs)

    async def read(self) -> bytes:
        """The rest of the body at once (error answers)."""
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body in pieces: each is everything that had arrived when it was read, so events that
        came together are handed over together."""
        connection = self._connection
        if connection is None:
            return
        try:
            while True:
                if connection.chunks:
                    yield connection.take()
                elif connection.complete:
                    return
                else:
                    await connection.wait()
        except (OSError, TimeoutError, httptools.HttpParserError, ConnectionClosedError) as exc:
            raise transport_error(exc, self._url) from exc

    async def finish(self, seconds: float) -> None:
        """Read what is left of a body whose content the caller has (an SSE stream after its final
        event) for up to `seconds` and 1 MiB, so the connection can serve the next request."""
        connection = self._connection
        if connection is None:
            return
        if connection.complete:  # the usual case: the end came with the final event, no timer needed
            connection.take()
            return
        try:
            async with asyncio.timeout(seconds):
                while not connection.complete and connection.buffered <= HIGH_WATER:
                    await connection.wait()
        except (OSError, TimeoutError, httptools.HttpParserError, ConnectionClosedError):
            return
        connection.take()

    def close(self) -> None:
        # A body read to the end gives its connection back to the pool; one left unread (a stream the
        # caller walked away from) is closed, so the upstream sees the disconnect and cancels.
        connection, self._connection = self._connection, None
        if connection is not None:
            self._client._release(connection)


class HTTPClient:
    """Keep-alive connections (`connection.Connection`) with the upstream's headers, cookies,
    timeouts and connection limit."""

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        max_connections: int = 1024,
    ) -> None:
        merged = dict(headers or {})
        if cookies:
            merged["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        self._headers = merged
        self._lines = _header_lines(merged)
        self._has_type = any(k.lower() == "content-type" for k in merged)
        self._timeout = timeout
        self._limit = max_connections
        self._slots: asyncio.Semaphore | None = None  # bound to the loop on first use
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._open = 0
        self._targets: dict[str, _Target] = {}
        self._tls: ssl.SSLContext | None = None
        self._dns: dict[tuple[str, int], tuple[float, list[tuple[int, tuple[Any, ...]]]]] = {}
        self._closed = False

    # --- public API -----------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send (`json` is encoded, `content` sent as is) and read the whole answer."""
        connection = await self._exchange(method, url, json, content, headers)
        try:
            parts = []
            while True:
                if connection.chunks:
                    parts.append(connection.take())  # also lets a paused connection read on
                if connection.complete:
                    break
                await connection.wait()
            return Reply(connection.status, Headers(connection.header_pairs), b"".join(parts))
        except (OSError, TimeoutError, httptools.HttpParserError, ConnectionClosedError) as exc:
            raise transport_error(exc, url) from exc
        finally:
            self._release(connection)

    async def get(self, url: str, *, headers: Mapping[str, str] | None = None) -> Reply:
        return await self.request("GET", url, headers=headers)

    async def post(
        self,
        url: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        return await self.request("POST", url, json=json, content=content, headers=headers)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Body]:
        """Send and hand over the answer before its body; leaving the block closes it."""
        body = Body(await self._exchange(method, url, json, content, headers), url, self)
        try:
            yield body
        finally:
            body.close()

    async def __aenter__(self) -> HTTPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    # --- the exchange ---------------------------------------------------------------------------

    async def _exchange(
        self,
        method: str,
        url: str,
        json: Any,
        content: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> Connection:
        """Send the request and wait for the answer's status and headers; the connection holds a slot
        until `_release`."""
        try:
            target = self._target(url)
        except ValueError as exc:
            raise transport_error(exc, url) from exc
        data = self._encode(method, target, json, content, headers)
        slots = self._slots
        if slots is None:
            slots = self._slots = asyncio.Semaphore(self._limit)
        await slots.acquire()
        try:
            for fresh in (False, True):
                connection = None if fresh else self._reuse(target.key)
                reused = connection is not None
                if connection is None:
                    connection = await self._connect(target.key, url)
                try:
                    connection.send(data)
                    while not connection.headers_done:
                        await connection.wait()
                    return connection
                except (OSError, TimeoutError, httptools.HttpParserError, ConnectionClosedError) as exc:
                    self._discard(connection)
                    if reused and connection.received == 0 and not isinstance(exc, TimeoutError):
                        continue  # the upstream had closed this idle connection: once more, fresh
                    raise transport_error(exc, url) from exc
                except BaseException:
                    self._discard(connection)
                    raise
            raise AssertionError("unreachable")
        except BaseException:
            slots.release()
            raise

    def _reuse(self, key: tuple[str, str, int]) -> Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest = asyncio.get_running_loop().time() - KEEP_IDLE
        while idle:
            connection = idle.pop()  # the most recently used: the likeliest to be open still
            if not connection.closed and connection.idle_since >= oldest:
                return connection
            self._discard(connection)
        return None

    async def _connect(self, key: tuple[str, str, int], url: str) -> Connection:
        if self._open >= self._limit:
            self._evict()
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if scheme == "https" else None
        self._open += 1
        try:
            async with asyncio.timeout(self._timeout):
                failure: OSError | None = None
                for family, address in await self._addresses(host, port):
                    try:
                        _, connection = await loop.create_connection(
                            lambda: Connection(loop, key, self._timeout),
                            address[0],
                            address[1],
                            family=family,
                            ssl=tls,
                            server_hostname=host if tls is not None else None,
                        )
                        return connection
                    except OSError as exc:  # refused on this address: the next one may serve
                        failure = exc
                assert failure is not None
                raise failure
        except TimeoutError as exc:
            self._open -= 1
            raise transport_error(ConnectTimeoutError("connect timed out"), url) from exc
        except (OSError, ssl.SSLError) as exc:
            self._open -= 1
            raise transport_error(exc, url) from exc
        except BaseException:
            self._open -= 1
            raise

    async def _addresses(self, host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
        """The host's addresses, resolved at most once a minute (a burst of new connections would
        otherwise queue one lookup each on the event loop's small thread pool)."""
        loop = asyncio.get_running_loop()
        cached = self._dns.get((host, port))
        if cached is not None and cached[0] > loop.time():
            return cached[1]
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"no address for {host}")
        addresses: list[tuple[int, tuple[Any, ...]]] = [
            (int(family), tuple(address)) for family, _, _, _, address in infos
        ]
        if len(self._dns) >= _URL_CACHE:
            self._dns.clear()
        self._dns[(host, port)] = (loop.time() + DNS_TTL, addresses)
        return addresses

    def _release(self, connection: Connection) -> None:
        """The exchange is over: keep the connection if it can serve another request, else close it."""
        if connection.reusable() and not self._closed:
            connection.recycle()
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(connection.key, []).append(connection)
        else:
            self._discard(connection)
        if self._slots is not None:
            self._slots.release()

    def _discard(self, connection: Connection) -> None:
        if connection.counted:
            connection.counted = False
            self._open -= 1
        connection.close()

    def _evict(self) -> None:
        """Close the longest-idle connection, to open one to another upstream within the limit."""
        candidates = [(c.idle_since, key) for key, idle in self._idle.items() for c in idle[:1]]
        if candidates:
            _, key = min(candidates)
            self._discard(self._idle[key].pop(0))

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            target = _parse_url(url)
            if len(self._targets) >= _URL_CACHE:
                self._targets.clear()
            self._targets[url] = target
        return target

    def _encode(
        self,
        method: str,
        target: _Target,
        json: Any,
        content: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> bytes:
        body = content if content is not None else b""
        lines = self._lines
        has_type = self._has_type
        if headers:
            merged = {**self._headers, **headers}
            lines = _header_lines(merged)
            has_type = any(k.lower() == "content-type" for k in merged)
        if json is not None:
            body = jsonlib.dumps(json).encode()
            if not has_type:
                lines += b"Content-Type: application/json\r\n"
        length = b"Content-Length: %d\r\n" % len(body) if body or method in ("POST", "PUT", "PATCH") else b""
        line = b"%s %s HTTP/1.1\r\n" % (method.encode("ascii"), target.path)
        return b"".join((line, target.head, lines, length, b"\r\n", body))

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls


def _header_lines(headers: Mapping[str, str]) -> bytes:
    out = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0") or ":" in name:
            raise ValueError(f"header {name!r} holds a line break, NUL or colon")
        out.append(f"{name}: {value}\r\n")
    return "".join(out).encode("latin-1")


def _parse_url(url: str) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL ({scheme or 'no scheme'})")
    host = parts.hostname
    port = parts.port or (443 if scheme == "https" else 80)
    shown = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        shown += f":{parts.port}"
    head = f"Host: {shown}\r\n"
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        head += f"Authorization: Basic {base64.b64encode(credentials.encode()).decode()}\r\n"
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_PATH_SAFE)
    return _Target((scheme, host, port), path.encode("ascii"), head.encode("latin-1"))
