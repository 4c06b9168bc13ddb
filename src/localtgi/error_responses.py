"""How a LocalTGIError is written on the wire: TGI's `{"error", "error_type"}` body and its status.

Use `error_response` for a JSON answer, `stream_error` for the SSE event that ends a TGI stream, and
`error_message` for the text alone (the OpenAI routes wrap it in their own shape).
"""

from __future__ import annotations

from typing import Any

from quart import Response

from localtgi.errors import IncompleteGenerationError, LocalTGIError, ValidationError
from localtgi.protocol import ErrorResponse


def error_message(exc: LocalTGIError) -> str:
    """TGI's `error` text for an error: validation errors get their prefix, generation errors theirs."""
    if isinstance(exc, ValidationError):
        return f"Input validation error: {exc.message}"
    if exc.error_type == "generation":
        return f"Request failed during generation: {exc.message}"
    if exc.error_type == "template_error":
        return f"Template error: {exc.message}"
    return exc.message


def error_payload(exc: LocalTGIError) -> dict[str, Any]:
    return ErrorResponse(error=error_message(exc), error_type=exc.error_type).wire()


def error_response(exc: LocalTGIError) -> Response:
    return Response(
        ErrorResponse(error=error_message(exc), error_type=exc.error_type).model_dump_json(),
        status=exc.status,
        content_type="application/json",
    )


def stream_error(exc: LocalTGIError) -> dict[str, Any]:
    if isinstance(exc, IncompleteGenerationError):
        return {"error": "Incomplete generation stream", "error_type": "incomplete_generation_stream"}
    return error_payload(exc)
