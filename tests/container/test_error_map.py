"""Upstream failures as real engines send them: error answers recorded from TGI's and vLLM's sources
(fixtures/upstream_errors.json says where each comes from) go through a real server, the HTTP client,
the error translation and the retry policy, and must come out with the status and retry behaviour the
README documents, keeping the engine's own message."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from containerkit import Waits, env_for
from faketgi import FakeTGI, Status
from infernet_tgi import errors
from infernet_tgi.upstream.http import event_error, redact, status_error

URL = "http://user:pw@tgi:8080/generate"
FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "upstream_errors.json").read_text())


def label(case: dict[str, Any]) -> str:
    body = case.get("body") or case.get("event") or {}
    error = body.get("error")
    kind = body.get("error_type") if isinstance(error, str) else (error or body).get("type")
    return f"{case['engine']}-{case.get('status', 'event')}-{kind}"


@pytest.mark.parametrize("case", FIXTURES["http"], ids=label)
async def test_recorded_engine_errors(
    app_for: Any, fake: FakeTGI, waits: Waits, case: dict[str, Any]
) -> None:
    """A real engine's error answer, sent by a real server, is served with the status and retry
    behaviour the README documents, and its own message is kept."""
    if "raw" in case:
        body, content_type = case["raw"].encode(), "text/html"
    else:
        body, content_type = json.dumps(case["body"]).encode(), "application/json"
    fake.script(*[Status(case["status"], raw=body, content_type=content_type)] * 2)
    retry = {"retry_params": {"tries": 2, "delay": 1}}
    client = await app_for(env_for(fake.url, TGI_INF_WORKFLOW_KW_ARGS=retry))
    job = {"source": 1, "destination": 1, "data": {"text": "x"}}
    response = await client.post("/service_output", json=job)
    answer = json.loads(await response.get_data(as_text=True))
    assert (response.status_code, answer["code"]) == (case["served"], str(case["served"])), case["source"]
    assert waits == ([1] if case["retried"] else []), case["source"]
    message = _message(case)
    if message:
        assert message in answer["description"]
    assert "pw" not in answer["description"]


@pytest.mark.parametrize("case", FIXTURES["stream"], ids=label)
def test_recorded_in_stream_errors(case: dict[str, Any]) -> None:
    error = event_error(case["event"], URL)
    assert (error.status, error.retryable) == (case["served"], case["retried"]), case["source"]
    assert _message(case) in str(error) and "pw" not in str(error)


def _message(case: dict[str, Any]) -> str:
    body = case.get("body") or case.get("event") or {}
    error = body.get("error")
    if isinstance(error, dict):
        return str(error["message"])
    return str(error or body.get("message") or "")


@pytest.mark.parametrize("status", range(400, 600))
def test_every_error_status_is_served_as_an_error(status: int) -> None:
    """Whatever the status and body, the answer is one of our upstream errors with a 4xx/5xx of ours."""
    for body in (b"", b"plain text", b'{"error": {"message": "nested", "type": "x"}}', b"[1]"):
        error = status_error(status, body, URL)
        assert isinstance(error, errors.UpstreamError)
        assert error.status in (422, 424, 429, 502, 503, 504)
    assert "Unauthorized" in str(status_error(401, b"", URL))


def test_every_error_class_has_a_status_and_renders_the_ritual_body() -> None:
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.InfernetTGIError):
            body = cls("cause").body()
            assert body == {"code": str(cls.status), "name": body["name"], "description": "cause"}
            assert cls.__doc__ and "raised when" in cls.__doc__.lower() or cls is errors.InfernetTGIError


def test_redact_leaves_plain_urls_alone() -> None:
    assert redact("http://h:1/x") == "http://h:1/x"
    assert redact("https://a:b@h/x") == "https://h/x"
