"""`HTTPClient`: the process's one HTTP client, a thin layer over one aiohttp connection pool.

Use one per process (the core's factory opens it, its `aclose` closes it) and hand it to every upstream
client. It is deliberately not httpx-shaped: measured here, httpx's client costs ~400 µs of CPU per
request on top of aiohttp's ~165 µs (its request/response models and hooks), even over an aiohttp
transport, and httpx's own pool collapses with hundreds of connections. So this offers only what the
upstream clients use: `request` (a whole `Reply`) and `stream` (a `Body` read chunk by chunk).

Every failure without an HTTP answer leaves as an `UpstreamError` (through `http.transport_error`, the
one place aiohttp's exceptions are translated); HTTP statuses are the caller's to judge.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from .http import transport_error


@dataclass(frozen=True)
class Reply:
    """A whole answer: status, headers (case-insensitive) and the raw body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; raises ValueError when it is not."""
        return jsonlib.loads(self.body)


class Body:
    """An answer whose body is read as it arrives (SSE needs each chunk at once)."""

    def __init__(self, response: aiohttp.ClientResponse, url: str) -> None:
        self._response = response
        self._url = url
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        """The rest of the body at once (error answers)."""
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_error(exc, self._url) from exc

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body in pieces: each is everything that had arrived when it was read, so events that
        came together are handed over together."""
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_error(exc, self._url) from exc

    def close(self) -> None:
        # A body read to the end gives its connection back to the pool; one left unread (a stream the
        # caller walked away from) is closed, so the upstream sees the disconnect and cancels.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class HTTPClient:
    """One aiohttp session with the upstream's headers, cookies, timeouts and connection limit."""

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        max_connections: int = 1024,
    ) -> None:
        self._headers = dict(headers or {})
        if cookies:
            self._headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
        )
        self._limit = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use: aiohttp binds a session to the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=30, ttl_dns_cache=60),
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=self._timeout,
            )
        return self._session

    async def _send(
        self,
        method: str,
        url: str,
        json: Any,
        content: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> aiohttp.ClientResponse:
        merged = {**self._headers, **headers} if headers else self._headers
        data = content
        if json is not None:
            data = jsonlib.dumps(json).encode()
            if "content-type" not in {k.lower() for k in merged}:
                merged = {**merged, "Content-Type": "application/json"}
        try:
            return await self._open().request(
                method, url, data=data, headers=merged, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_error(exc, url) from exc

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
        response = await self._send(method, url, json, content, headers)
        try:
            body = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            response.close()
            raise transport_error(exc, url) from exc
        response.release()
        return Reply(response.status, response.headers, body)

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
        body = Body(await self._send(method, url, json, content, headers), url)
        try:
            yield body
        finally:
            body.close()

    async def __aenter__(self) -> HTTPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
