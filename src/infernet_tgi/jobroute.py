"""`JobRoute`: the hot path, `POST /service_output` served straight from ASGI in front of the Quart app.

Use it as the app's `asgi_app` middleware (`create_app` does): it answers `POST /service_output` itself
and hands every other request (other routes, other methods, lifespan) to Quart unchanged. A job then
costs no Quart request, context, response or handler tasks (measured: about a quarter of the CPU of a
job), and behaves as the Quart route did: the bearer check, the body limit (413) and body timeout
(408, counted from the headers), the same JSON answers and error bodies, stream bodies written chunk
by chunk, and a client that hangs up cancels its job within WATCH_AFTER (so the upstream sees the
disconnect). The route stays registered in
Quart too, with the same `JobService`, so the OpenAPI document lists it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .errors import InfernetTGIError, PayloadTooLargeError
from .jobservice import JobService, error_bytes
from .relay import Relay

log = logging.getLogger("infernet_tgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]  # Quart's `asgi_app`, typed with its own TypedDicts

PATH = "/service_output"
BODY_TIMEOUT = 60.0  # seconds from a job's headers to the end of its body (Quart's 60 s, from the headers)
# Seconds a job runs before a task starts watching for its client's disconnect: a client that hangs
# up is noticed at most this late, and the many jobs answered sooner never pay for the task (at
# 20 ms, jobs queued at concurrency 64 against an instant backend straddled the mark).
WATCH_AFTER = 0.1
_JSON_TYPE = (b"content-type", b"application/json")
_TEXT_TYPE = (b"content-type", b"text/plain; charset=utf-8")
_END = {"type": "http.response.body", "body": b"", "more_body": False}


class _ClientGone(Exception):
    """The client disconnected before its body arrived: there is no one to answer."""


class JobRoute:
    """ASGI middleware serving `POST /service_output` with `service`, everything else with `app`."""

    def __init__(
        self, app: ASGIApp, service: JobService, *, max_body: int, body_timeout: float = BODY_TIMEOUT
    ) -> None:
        self._app = app
        self._service = service
        self._max_body = max_body
        self._body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != PATH
            or scope["method"] != "POST"
            or scope.get("root_path")
        ):
            await self._app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        watcher: asyncio.Task[None] | None = None
        reading = True  # the body is being received
        late = gone = False
        began = loop.time()
        timer: asyncio.TimerHandle | None  # see tick and finally

        def hung_up() -> None:
            nonlocal gone
            gone = True
            task.cancel()

        def watch() -> None:
            nonlocal watcher
            watcher = asyncio.create_task(_watch(receive, hung_up))

        def expire() -> None:
            nonlocal late
            if reading:
                late = True
                task.cancel()

        def tick() -> None:
            # One timer per job: the start of the watcher for a job still running after
            # WATCH_AFTER, or, while the body is still being received, its deadline.
            nonlocal timer
            if reading:
                timer = loop.call_at(began + self._body_timeout, expire)
            else:
                watch()

        timer = loop.call_at(began + min(WATCH_AFTER, self._body_timeout), tick)
        try:
            try:
                authorization, length = _headers(scope["headers"])
                self._service.check_bearer(authorization)
                raw = await self._body(receive, length)
                reading = False
                # Quart cancels a job whose client went away; so does a watcher task, started for a
                # job still running after WATCH_AFTER (a task per job was a tenth of a fast job's CPU).
                if loop.time() >= began + WATCH_AFTER:  # a slow body: the timer now waits for it
                    timer.cancel()
                    watch()
                answer = await self._service.answer(raw)
            except InfernetTGIError as exc:
                if exc.status >= 500:
                    log.warning("job failed: %s", exc.description)
                await _whole(send, exc.status, error_bytes(exc.status, *_name_and_cause(exc)))
                return
            except _ClientGone:
                return
            except Exception as exc:
                log.exception("unexpected error")
                cause = f"internal error ({type(exc).__name__}); see the container log"
                await _whole(send, 500, error_bytes(500, "Internal Server Error", cause))
                return
            except asyncio.CancelledError:
                if not late or gone:
                    raise
                task.uncancel()  # our own cancellation: the body is late
                late_text = f"the request body did not arrive within {self._body_timeout:g} s"
                await _whole(send, 408, error_bytes(408, "Request Timeout", late_text))
                return
            if isinstance(answer, Relay):
                await _relay(send, answer)
            else:
                await _whole(send, 200, answer)
            # No await follows the last send (uvicorn's `receive` says "disconnect" from then on): the
            # watcher cannot run, and so cannot cancel this task, before `finally` stops it.
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()  # our own cancellation: the client left, nothing more to do
        finally:
            timer.cancel()
            # `tick` holds the timer (its cell) and the timer holds `tick`: cleared, that cycle and
            # the request it refers to are freed by reference counting now, not by the collector.
            timer = None
            if watcher is not None:
                watcher.cancel()

    async def _body(self, receive: Receive, length: int | None) -> bytes:
        limit = self._max_body
        if length is not None and length > limit:
            raise _too_large(limit)
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone()
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            parts, size = [body], len(body)
            while True:
                if size > limit:
                    raise _too_large(limit)
                message = await receive()
                if message["type"] != "http.request":
                    raise _ClientGone()
                part = message.get("body", b"")
                parts.append(part)
                size += len(part)
                if not message.get("more_body", False):
                    break
            body = b"".join(parts)
        if len(body) > limit:
            raise _too_large(limit)
        return body


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"request body is over {limit} bytes (TGI_INF_MAX_BODY_BYTES)")


def _name_and_cause(exc: InfernetTGIError) -> tuple[str, str]:
    body = exc.body()
    return body["name"], body["description"]


def _headers(headers: list[tuple[bytes, bytes]]) -> tuple[str, int | None]:
    """The Authorization header and the Content-Length (None when absent or not a number)."""
    authorization = ""
    length: int | None = None
    for name, value in headers:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
    return authorization, length


async def _watch(receive: Receive, hung_up: Callable[[], None]) -> None:
    """Wait for the client to disconnect (the body has been read; nothing else can arrive)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    hung_up()


async def _whole(send: Send, status: int, body: bytes) -> None:
    headers = [_JSON_TYPE, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _relay(send: Send, relay: Relay) -> None:
    """A stream job's body, chunk by chunk; closing the relay closes the upstream stream."""
    try:
        await send({"type": "http.response.start", "status": 200, "headers": [_TEXT_TYPE]})
        await relay.write_to(send)
    finally:
        await relay.aclose()  # a no-op when written to the end; else closes the upstream stream
    await send(dict(_END))
