"""The translation of upstream failures is complete: every httpx exception, every TGI error_type and
every HTTP error status lands on a specific class of our tree, and every class is reachable."""

from __future__ import annotations

import inspect
import json

import httpx
import pytest

from infernet_tgi import errors
from infernet_tgi.upstream.http import event_error, redact, status_error, transport_error

URL = "http://user:pw@tgi:8080/generate"

TGI_TYPES = {
    "validation": errors.UpstreamValidationError,
    "generation": errors.UpstreamGenerationError,
    "overloaded": errors.UpstreamOverloadedError,
    "incomplete_generation": errors.UpstreamProtocolError,
    "incomplete_generation_stream": errors.UpstreamProtocolError,
    "template_error": errors.UpstreamValidationError,
    "missing_template_variable": errors.UpstreamValidationError,
    "tool_error": errors.UpstreamValidationError,
    "healthcheck": errors.UpstreamUnavailableError,
}


def httpx_exceptions() -> list[type[httpx.HTTPError]]:
    return [
        cls
        for _, cls in inspect.getmembers(httpx, inspect.isclass)
        if issubclass(cls, httpx.HTTPError) and cls is not httpx.HTTPStatusError
    ]


def make(cls: type[httpx.HTTPError]) -> httpx.HTTPError:
    request = httpx.Request("POST", URL)
    if cls in (httpx.HTTPError,):
        return cls("boom")
    return cls("boom", request=request)  # type: ignore[call-arg]


@pytest.mark.parametrize("cls", httpx_exceptions(), ids=lambda c: c.__name__)
def test_every_httpx_exception_is_translated(cls: type[httpx.HTTPError]) -> None:
    error = transport_error(make(cls), URL)
    assert isinstance(error, errors.UpstreamError)
    assert "pw" not in str(error) and "tgi:8080" in str(error)
    if issubclass(cls, httpx.TransportError):
        assert error.retryable, cls
    if issubclass(cls, httpx.ConnectError):
        assert str(error).startswith("upstream unreachable at http://tgi:8080/generate")


@pytest.mark.parametrize("error_type,expected", TGI_TYPES.items())
def test_every_tgi_error_type(error_type: str, expected: type[errors.UpstreamError]) -> None:
    body = json.dumps({"error": "msg", "error_type": error_type}).encode()
    for status in (422, 424, 429, 500, 503):
        error = status_error(status, body, URL)
        assert type(error) is expected, (error_type, status)
        assert "msg" in str(error)
    event = event_error({"error": "msg", "error_type": error_type}, URL)
    assert type(event) is expected


@pytest.mark.parametrize("status", range(400, 600))
def test_every_error_status_maps_to_a_specific_class(status: int) -> None:
    for body in (b"", b"plain text", b'{"error": {"message": "nested", "type": "x"}}', b"[1]"):
        error = status_error(status, body, URL)
        assert type(error) in {
            errors.UpstreamValidationError,
            errors.UpstreamGenerationError,
            errors.UpstreamOverloadedError,
            errors.UpstreamUnavailableError,
            errors.UpstreamTimeoutError,
            errors.UpstreamShardError,
            errors.UpstreamProtocolError,
        }
        assert error.status in (422, 424, 429, 502, 503, 504)
    expected_retryable = status in (408, 424, 429, 502, 503, 504)
    assert status_error(status, b"", URL).retryable is expected_retryable


def test_messages_keep_the_upstream_cause() -> None:
    assert "nested" in str(status_error(400, b'{"error": {"message": "nested"}}', URL))
    assert "flat" in str(status_error(400, b'{"object": "error", "message": "flat"}', URL))
    assert "Unauthorized" in str(status_error(401, b"", URL))
    assert "Model is overloaded" in str(
        event_error({"error": {"message": "Model is overloaded", "http_status_code": 429}}, URL)
    )
    assert type(event_error({"error": {"message": "x", "http_status_code": 422}}, URL)) is (
        errors.UpstreamValidationError
    )


def test_every_upstream_class_is_reachable() -> None:
    reached = {type(status_error(s, b"", URL)) for s in range(400, 600)}
    reached |= {type(transport_error(make(c), URL)) for c in httpx_exceptions()}
    reached |= set(TGI_TYPES.values())
    defined = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.UpstreamError) and cls is not errors.UpstreamError
    }
    assert defined <= reached, defined - reached


def test_every_error_class_has_a_status_and_renders_the_ritual_body() -> None:
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.InfernetTGIError):
            body = cls("cause").body()
            assert body == {"code": str(cls.status), "name": body["name"], "description": "cause"}
            assert cls.__doc__ and "raised when" in cls.__doc__.lower() or cls is errors.InfernetTGIError


def test_redact_leaves_plain_urls_alone() -> None:
    assert redact("http://h:1/x") == "http://h:1/x"
    assert redact("https://a:b@h/x") == "https://h/x"
