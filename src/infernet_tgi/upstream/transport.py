"""`PooledClient`: the process's one HTTP client, httpx's API over aiohttp's connection pool.

Use it wherever an `httpx.AsyncClient` is expected (the app's lifespan creates one). Why not plain
httpx: measured here, httpx's pool collapses with hundreds of concurrent connections (43 req/s at
concurrency 256 against a 200 ms backend, where aiohttp does ~1000), and building each request costs
~0.5 ms of CPU. So `request` and `stream` go straight to one aiohttp session and come back as
`httpx.Response` objects; aiohttp's exceptions are mapped to httpx's here, and `upstream.http`
remains the one place where those become our errors.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx


class _Body(httpx.AsyncByteStream):
    """A response body, chunk by chunk as it arrives (SSE needs each chunk at once)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _httpx_error(exc) from exc

    async def aclose(self) -> None:
        # A body read to the end gives its connection back to the pool; one left unread (a stream the
        # caller walked away from) is closed, so the upstream sees the disconnect and cancels.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class PooledClient(httpx.AsyncClient):
    """httpx's client API (`get`, `post`, `request`, `stream`) over one aiohttp pool."""

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        max_connections: int = 1024,
    ) -> None:
        super().__init__(headers=headers, timeout=timeout)
        self._base_headers = dict(headers or {})
        if cookies:
            self._base_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        self._timeout_s = timeout
        self._limit = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=30, ttl_dns_cache=60)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes content-encoding itself
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self._timeout_s,
                    sock_connect=self._timeout_s,
                    sock_read=self._timeout_s,
                ),
            )
        return self._session

    async def _send(
        self,
        method: str,
        url: httpx.URL | str,
        json: Any,
        content: bytes | str | None,
        headers: Mapping[str, str] | None,
        timeout: Any,  # noqa: ASYNC109 - httpx's per-call timeout, passed to aiohttp
    ) -> aiohttp.ClientResponse:
        merged = {**self._base_headers, **(headers or {})}
        data: bytes | None = None
        if json is not None:
            data = jsonlib.dumps(json).encode()
            merged.setdefault("Content-Type", "application/json")
        elif content is not None:
            data = content.encode() if isinstance(content, str) else content
        extra: dict[str, Any] = {}
        if isinstance(timeout, int | float):
            seconds = float(timeout)
            extra["timeout"] = aiohttp.ClientTimeout(
                total=None, connect=seconds, sock_connect=seconds, sock_read=seconds
            )
        try:
            return await self._open().request(
                method, str(url), data=data, headers=merged, allow_redirects=False, **extra
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _httpx_error(exc) from exc

    async def request(  # type: ignore[override]
        self,
        method: str,
        url: httpx.URL | str,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Any = None,  # noqa: ASYNC109 - httpx's API
        **_: Any,
    ) -> httpx.Response:
        """Send and read the whole body."""
        raw = await self._send(method, url, json, content, headers, timeout)
        try:
            body = await raw.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raw.close()
            raise _httpx_error(exc) from exc
        raw.release()
        return httpx.Response(raw.status, headers=raw.raw_headers, content=body)

    @asynccontextmanager
    async def stream(  # type: ignore[override]
        self,
        method: str,
        url: httpx.URL | str,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Any = None,  # noqa: ASYNC109 - httpx's API
        **_: Any,
    ) -> AsyncIterator[httpx.Response]:
        """Send and hand over the body as it arrives; leaving the block closes it."""
        raw = await self._send(method, url, json, content, headers, timeout)
        body = _Body(raw)
        try:
            yield httpx.Response(raw.status, headers=raw.raw_headers, stream=body)
        finally:
            await body.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await super().aclose()


def _httpx_error(exc: BaseException) -> httpx.TransportError:
    """The httpx exception that says the same thing as an aiohttp one."""
    try:
        message = str(exc) or type(exc).__name__
    except Exception:  # some aiohttp errors cannot render without their connection key
        message = type(exc).__name__
    kind: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(exc, aiohttp.SocketTimeoutError | aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError):
        kind = httpx.RemoteProtocolError
    elif isinstance(exc, aiohttp.ClientOSError | aiohttp.ClientPayloadError):
        kind = httpx.ReadError
    elif isinstance(exc, aiohttp.InvalidURL):
        kind = httpx.UnsupportedProtocol
    else:
        kind = httpx.TransportError
    return kind(message)
