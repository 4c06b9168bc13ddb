"""Hostile JSON schemas and regexes (issue 8, items 1 and 2) against the running container.

A job's schema never makes the container fetch anything (a loopback listener counts connections),
every regex from a job runs on RE2, bad ones are 422s before the engine is called, and the event
loop stays responsive while pathological checks run.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from containerkit import assert_responsive, probe_while
from faketgi import FakeTGI, Ok

EVIL = "(a+)+b"  # exponential for a backtracking matcher on "aaaa…a"


class Listener:
    """A loopback TCP server that only counts the connections it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def job(url: str, parameters: dict[str, Any], timeout: float = 30) -> httpx.Response:
    body = {"source": 1, "destination": 1, "data": {"text": "hi", "parameters": parameters}}
    return httpx.post(url + "/service_output", json=body, timeout=timeout)


def schema_job(url: str, schema: dict[str, Any]) -> httpx.Response:
    return job(url, {"json_format": schema, "json_format_is_json_schema": True})


def assert_422_before_engine(response: httpx.Response, fake: FakeTGI, *fragments: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == "422"
    for fragment in fragments:
        assert fragment in body["description"], body["description"]
    assert [r for r in fake.requests if r.method == "POST"] == []  # the engine was never called


# -- item 1: $ref ----------------------------------------------------------------------------------


def test_remote_refs_are_refused_by_name_and_nothing_is_fetched(
    container: str, fake: FakeTGI, listener: Listener
) -> None:
    for ref in (
        f"http://127.0.0.1:{listener.port}/x",
        f"https://127.0.0.1:{listener.port}/x#/a",
        f"//127.0.0.1:{listener.port}/x",
        "file:///etc/passwd",
        "other.json#/$defs/a",
        "#anchor",
    ):
        response = schema_job(container, {"type": "object", "properties": {"a": {"$ref": ref}}})
        assert_422_before_engine(response, fake, repr(ref), "only references into the same schema")
    for schema in (
        {"$dynamicRef": f"http://127.0.0.1:{listener.port}/x"},
        {"properties": {"a": {"$id": f"http://127.0.0.1:{listener.port}/", "$ref": "#/x"}}},
        {"properties": {"a": {"$schema": "http://json-schema.org/draft-04/schema#"}}},
    ):
        assert_422_before_engine(schema_job(container, schema), fake, "not supported")
    time.sleep(0.3)  # a fetch would have connected by now
    assert listener.connections == 0


def test_cyclic_and_dangling_refs_are_422s(container: str, fake: FakeTGI) -> None:
    assert_422_before_engine(schema_job(container, {"$ref": "#"}), fake, "`$ref` cycle")
    cycle = {
        "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}},
        "$ref": "#/$defs/a",
    }
    assert_422_before_engine(schema_job(container, cycle), fake, "`$ref` cycle")
    assert_422_before_engine(schema_job(container, {"$ref": "#/$defs/none"}), fake, "points to nothing")
    doubling = {f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}] * 2} for i in range(24)}
    fan_out = {"$defs": {**doubling, "d24": {"type": "object"}}, "$ref": "#/$defs/d0"}
    assert_422_before_engine(schema_job(container, fan_out), fake, "subschemas apply to one value")


def test_local_refs_work_including_recursion(container: str, fake: FakeTGI) -> None:
    tree = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["v"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/node",
    }
    fake.script(Ok(text='{"v": 1, "kids": [{"v": 2, "kids": [{"v": 3}]}]}'))
    ok = schema_job(container, tree)
    assert ok.status_code == 200, ok.text
    assert ok.json()["output"] == '{"v": 1, "kids": [{"v": 2, "kids": [{"v": 3}]}]}'
    sent = [r for r in fake.requests if r.method == "POST"][0].body["parameters"]["grammar"]
    assert sent == {"type": "json", "value": tree}  # the engine gets the schema as the job wrote it
    fake.script(Ok(text='{"v": 1, "kids": [{"v": "two"}]}'))
    bad = schema_job(container, tree)
    assert bad.status_code == 502 and "at kids/0/v" in bad.json()["description"]


# -- item 2: regexes -------------------------------------------------------------------------------


def test_pathological_regexes_are_checked_in_linear_time(container: str, fake: FakeTGI) -> None:
    answer = "a" * 5000  # 2^5000 steps for a backtracking matcher
    cases: list[tuple[dict[str, Any], str]] = [
        ({"grammar": {"type": "regex", "value": EVIL}}, answer),
        (
            {"json_format": {"type": "string", "pattern": f"^{EVIL}$"}, "json_format_is_json_schema": True},
            f'"{answer}"',
        ),
        (
            {
                "json_format": {
                    "type": "object",
                    "patternProperties": {f"^{EVIL}$": {}},
                    "additionalProperties": False,
                },
                "json_format_is_json_schema": True,
            },
            f'{{"{answer}": 1}}',
        ),
        (
            {
                "json_format": {"type": "object", "propertyNames": {"pattern": f"^{EVIL}$"}},
                "json_format_is_json_schema": True,
            },
            f'{{"{answer}": 1}}',
        ),
    ]
    for parameters, text in cases:
        fake.script(Ok(text=text, finish_reason="eos_token"))
        started = time.monotonic()
        response = job(container, parameters, timeout=10)
        assert time.monotonic() - started < 3
        assert response.status_code == 502, response.text
        assert "upstream ignored the constraint" in response.json()["description"]
    fake.script(Ok(text="aaab"))
    assert job(container, {"grammar": {"type": "regex", "value": EVIL}}).json()["output"] == "aaab"


@pytest.mark.parametrize(
    "pattern,reason",
    [("(a)\\1", "invalid escape sequence"), ("(?=a)a", "invalid perl operator"), ("(", "missing )"),
     ("a" * 3000, "at most"), (".{0,500}x", "too complex"), ("\\pL{1,1000}", "pattern too large")],
)
def test_bad_or_unsupported_regexes_are_422s_before_the_engine(
    container: str, fake: FakeTGI, pattern: str, reason: str
) -> None:
    assert_422_before_engine(job(container, {"grammar": {"type": "regex", "value": pattern}}), fake, reason)
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": pattern}}}
    assert_422_before_engine(schema_job(container, schema), fake, reason)
    assert_422_before_engine(schema_job(container, {"patternProperties": {pattern: {}}}), fake, reason)


def test_schema_limits_are_422s(container: str, fake: FakeTGI) -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(60):
        deep = {"type": "array", "items": deep}
    assert_422_before_engine(schema_job(container, deep), fake, "nested deeper than")
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(1000)}}
    assert_422_before_engine(schema_job(container, wide), fake, "more than 2000 values")
    many = {"type": "object", "properties": {f"p{i}": {"pattern": f"^{i}$"} for i in range(65)}}
    assert_422_before_engine(schema_job(container, many), fake, "more than 64 different regexes")
    mixed = {"patternProperties": {"a": {}}, "unevaluatedProperties": False}
    assert_422_before_engine(schema_job(container, mixed), fake, "not supported")


def test_a_schema_that_multiplies_work_per_level_stops_at_its_budget(container: str, fake: FakeTGI) -> None:
    doubling = {"type": "array", "allOf": [{"items": {"$ref": "#"}}, {"items": {"$ref": "#"}}]}
    fake.script(Ok(text="[" * 40 + "]" * 40))  # 2^40 checks without a budget
    started = time.monotonic()
    response = schema_job(container, doubling)
    assert time.monotonic() - started < 5
    assert response.status_code == 422 and "steps" in response.json()["description"]


# -- the event loop stays free -----------------------------------------------------------------------


def test_event_loop_answers_get_within_100_ms_while_hostile_jobs_run(
    container: str, fake: FakeTGI, listener: Listener
) -> None:
    doubling = {"type": "array", "allOf": [{"items": {"$ref": "#"}}, {"items": {"$ref": "#"}}]}
    remote = {"$ref": f"http://127.0.0.1:{listener.port}/s"}
    # valid and near the size limit: checking its form alone takes a few hundred milliseconds
    big = {"type": "object", "properties": {f"p{i}": {"type": "string", "minLength": 1} for i in range(600)}}
    waves: list[tuple[dict[str, Any], str]] = [
        ({"grammar": {"type": "regex", "value": EVIL}}, "a" * 3000),
        (
            {"json_format": {"type": "string", "pattern": EVIL}, "json_format_is_json_schema": True},
            f'"{"a" * 3000}"',
        ),
        ({"json_format": doubling, "json_format_is_json_schema": True}, "[" * 40 + "]" * 40),
        ({"json_format": big, "json_format_is_json_schema": True}, "{}"),
    ]
    latencies: list[float] = []
    statuses: list[int] = []
    try:
        with ThreadPoolExecutor(8) as pool:
            for parameters, answer in waves:
                fake.default = Ok(text=answer, delay=0.2)
                ref_job = {"json_format": remote, "json_format_is_json_schema": True}
                futures = [pool.submit(job, container, p) for p in [parameters] * 4 + [ref_job] * 2]
                latencies += probe_while(container, futures)
                statuses += [f.result().status_code for f in futures]
    finally:
        fake.default = Ok()
    expected = [502] * 4 + [422] * 2 + [502] * 4 + [422] * 2 + [422] * 6 + [200] * 4 + [422] * 2
    assert statuses == expected, statuses
    assert_responsive(latencies)
    assert listener.connections == 0
