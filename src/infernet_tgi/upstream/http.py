"""The one place where HTTP failures become `UpstreamError`s.

Use `transport_error` for a failure of the HTTP client (the client calls it), `status_error` for a
non-2xx answer and `event_error` for an error event inside a 200 stream. The mapping follows the TGI client's
rules (error_type first, then status), extended to the transport failures the reference leaves unhandled.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import httptools

from ..errors import (
    UpstreamError,
    UpstreamGenerationError,
    UpstreamOverloadedError,
    UpstreamProtocolError,
    UpstreamShardError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    UpstreamValidationError,
)
from ..redaction import redact as redact  # re-exported: the upstream modules import it from here

_BY_TYPE: dict[str, type[UpstreamError]] = {
    "validation": UpstreamValidationError,
    "template_error": UpstreamValidationError,
    "missing_template_variable": UpstreamValidationError,
    "tool_error": UpstreamValidationError,
    "generation": UpstreamGenerationError,
    "overloaded": UpstreamOverloadedError,
    "incomplete_generation": UpstreamProtocolError,
    "incomplete_generation_stream": UpstreamProtocolError,
    "healthcheck": UpstreamUnavailableError,
}

_BY_STATUS: dict[int, type[UpstreamError]] = {
    400: UpstreamValidationError,
    408: UpstreamTimeoutError,
    413: UpstreamValidationError,
    422: UpstreamValidationError,
    424: UpstreamShardError,  # TGI's client: a 424 without error_type "generation" = shard not ready
    429: UpstreamOverloadedError,
    502: UpstreamUnavailableError,
    503: UpstreamUnavailableError,
    504: UpstreamShardError,
}

_DESCRIBE: dict[type[UpstreamError], str] = {
    UpstreamValidationError: "upstream rejected the request",
    UpstreamGenerationError: "upstream failed during generation",
    UpstreamOverloadedError: "upstream overloaded",
    UpstreamUnavailableError: "upstream unavailable",
    UpstreamShardError: "upstream shard not ready",
    UpstreamTimeoutError: "upstream timed out",
    UpstreamProtocolError: "upstream error",
}


class ConnectTimeoutError(Exception):
    """The client's own signal: no connection within the timeout (translated by `transport_error`)."""


class ConnectionClosedError(Exception):
    """The client's own signal: the upstream closed the connection before the answer was complete
    (translated by `transport_error`)."""


def transport_error(exc: BaseException, url: str) -> UpstreamError:
    """A failure without an HTTP answer (or with a broken one) as an error of our tree."""
    where = redact(url)
    detail = _detail(exc)
    if isinstance(exc, ConnectTimeoutError):
        return UpstreamUnavailableError(f"upstream unreachable at {where}: connect timed out")
    if isinstance(exc, TimeoutError):
        return UpstreamTimeoutError(f"upstream timed out at {where}: no data for the read timeout")
    if isinstance(exc, ConnectionClosedError):
        return UpstreamUnavailableError(f"upstream closed the connection at {where}: {detail}")
    if isinstance(exc, httptools.HttpParserError):
        return UpstreamUnavailableError(f"upstream sent a malformed HTTP answer at {where}: {detail}")
    if isinstance(exc, OSError):  # raised while connecting (refused, unreachable, DNS, TLS)
        return UpstreamUnavailableError(f"upstream unreachable at {where}: {detail}")
    return UpstreamUnavailableError(f"upstream transport failed at {where}: {detail}")


def _detail(exc: BaseException) -> str:
    try:
        return str(exc) or type(exc).__name__
    except Exception:  # an exception whose str() itself fails
        return type(exc).__name__


def status_error(status: int, body: bytes, url: str) -> UpstreamError:
    """A non-2xx answer as an error of our tree, keeping the upstream's own message."""
    payload = _json(body)
    message, error_type = _message(payload) if payload is not None else (None, None)
    if message is None:
        text = body.decode("utf-8", "replace").strip()
        message = text[:500] if text else _phrase(status)
    cls = _BY_TYPE.get(error_type or "") or _BY_STATUS.get(status) or UpstreamProtocolError
    if cls is UpstreamShardError and error_type == "generation":
        cls = UpstreamGenerationError
    return cls(f"{_DESCRIBE[cls]} ({status} at {redact(url)}): {message}")


def event_error(payload: dict[str, Any], url: str) -> UpstreamError:
    """An error event inside a 200 stream (TGI `{"error","error_type"}`, OpenAI `{"error":{...}}`)."""
    message, error_type = _message(payload)
    status = _status_in(payload)
    cls = _BY_TYPE.get(error_type or "") or _BY_STATUS.get(status or 0) or UpstreamProtocolError
    return cls(f"{_DESCRIBE[cls]} (in stream at {redact(url)}): {message or 'unknown error'}")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _message(payload: Any) -> tuple[str | None, str | None]:
    if not isinstance(payload, dict):
        return None, None
    error = payload.get("error")
    if isinstance(error, str):
        error_type = payload.get("error_type")
        return error, error_type if isinstance(error_type, str) else None
    if isinstance(error, dict):
        message = error.get("message")
        error_type = error.get("type")
        return (
            str(message) if message is not None else json.dumps(error),
            error_type if isinstance(error_type, str) else None,
        )
    for key in ("message", "detail"):
        if key in payload:
            value = payload[key]
            return (value if isinstance(value, str) else json.dumps(value)), None
    return None, None


def _status_in(payload: dict[str, Any]) -> int | None:
    error = payload.get("error")
    if isinstance(error, dict):
        for key in ("http_status_code", "code"):
            value = error.get(key)
            if isinstance(value, int):
                return value
    # vLLM before 0.10.1: a flat {"object": "error", "message", "type", "code"}
    code = payload.get("code")
    if payload.get("object") == "error" and isinstance(code, int):
        return code
    return None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
