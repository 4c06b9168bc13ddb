"""TGI native routes over real HTTP (hypercorn on loopback, tiny model): shapes, SSE, errors, limits."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from typing import Any

import httpx
import pytest

from localtgi.models import LoadedModel
from localtgi.settings import Settings
from localtgikit import RunningServer

JSON = {"content-type": "application/json"}


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """Parse TGI SSE strictly: every event is `data:` (no space) + JSON + blank line."""
    text = raw.decode()
    assert text.endswith("\n\n")
    events = []
    for block in text[:-2].split("\n\n"):
        assert block.startswith("data:{"), block
        events.append(json.loads(block[len("data:") :]))
    return events


async def post(server: RunningServer, path: str, body: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        return await client.post(path, json=body)


async def test_generate_shape_and_omissions(localtgi: RunningServer) -> None:
    plain = await post(localtgi, "/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 4}})
    assert plain.status_code == 200
    assert list(plain.json()) == ["generated_text"]  # no details unless asked for
    r = await post(
        localtgi,
        "/generate",
        {"inputs": "Hello", "parameters": {"max_new_tokens": 4, "details": True}},
    )
    body = r.json()
    details = body["details"]
    assert set(details) == {"finish_reason", "generated_tokens", "seed", "prefill", "tokens"}
    assert details["finish_reason"] == "length" and details["generated_tokens"] == 4
    assert details["seed"] is None and details["prefill"] == []  # greedy; no decoder_input_details
    assert len(details["tokens"]) == 4
    assert all(set(t) == {"id", "text", "logprob", "special"} for t in details["tokens"])
    assert all(t["logprob"] < 0 for t in details["tokens"])
    assert body["generated_text"] == "".join(t["text"] for t in details["tokens"])
    assert body["generated_text"] == plain.json()["generated_text"]  # greedy is deterministic


async def test_generate_prefill_top_tokens_and_headers(localtgi: RunningServer) -> None:
    r = await post(
        localtgi,
        "/generate",
        {"inputs": "Hello world", "parameters": {"max_new_tokens": 3, "decoder_input_details": True,
                                                 "top_n_tokens": 3}},
    )
    details = r.json()["details"]  # decoder_input_details alone brings details
    prefill = details["prefill"]
    assert [p["text"] for p in prefill] == ["Hello", " world"]
    assert prefill[0]["logprob"] is None and prefill[1]["logprob"] < 0
    assert len(details["top_tokens"]) == 3 and all(len(t) == 3 for t in details["top_tokens"])
    for token, top in zip(details["tokens"], details["top_tokens"], strict=True):
        assert top[0]["logprob"] >= top[1]["logprob"] >= top[2]["logprob"]
        assert token["logprob"] <= top[0]["logprob"] + 1e-6
    h = r.headers
    assert h["x-compute-type"] == "cpu" and h["x-compute-characters"] == "11"
    assert h["x-prompt-tokens"] == "2" and h["x-generated-tokens"] == "3"
    assert float(h["x-compute-time"]) > 0
    for name in ("x-total-time", "x-validation-time", "x-queue-time", "x-inference-time",
                 "x-time-per-token"):
        assert h[name].isdigit(), name
    assert "retry-after" not in h


async def test_best_of(localtgi: RunningServer) -> None:
    r = await post(
        localtgi,
        "/generate",
        {"inputs": "Hello", "parameters": {"max_new_tokens": 3, "best_of": 2, "do_sample": True,
                                           "details": True}},
    )
    details = r.json()["details"]
    others = details["best_of_sequences"]
    assert len(others) == 1
    assert isinstance(details["seed"], int) and isinstance(others[0]["seed"], int)
    best = sum(t["logprob"] for t in details["tokens"])
    assert best >= sum(t["logprob"] for t in others[0]["tokens"])
    assert "top_tokens" not in others[0]


async def test_compat_route_and_return_full_text(localtgi: RunningServer) -> None:
    p = {"max_new_tokens": 3}
    compat = await post(localtgi, "/", {"inputs": "Hello", "parameters": p})
    assert compat.status_code == 200 and isinstance(compat.json(), list)
    gen = await post(localtgi, "/generate", {"inputs": "Hello", "parameters": p})
    # On POST / a null return_full_text becomes true (text-generation pipeline).
    assert compat.json()[0]["generated_text"] == "Hello" + gen.json()["generated_text"]
    off = await post(localtgi, "/", {"inputs": "Hello", "parameters": {**p,
                                                                       "return_full_text": False}})
    assert off.json()[0]["generated_text"] == gen.json()["generated_text"]
    stream = await post(localtgi, "/", {"inputs": "Hello", "parameters": p, "stream": True})
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert sse_events(stream.content)[-1]["generated_text"] == compat.json()[0]["generated_text"]


async def test_sse_framing(localtgi: RunningServer) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 4, "details": True,
                                              "top_n_tokens": 2}}
    r = await post(localtgi, "/generate_stream", body)
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    assert r.headers["x-compute-characters"] == "5" and "x-compute-time" not in r.headers
    assert b"[DONE]" not in r.content
    events = sse_events(r.content)
    assert [e["index"] for e in events] == [1, 2, 3, 4]
    for e in events[:-1]:
        assert e["generated_text"] is None and e["details"] is None  # present as null
        assert len(e["top_tokens"]) == 2  # flat list per event
    last = events[-1]
    assert last["details"] == {"finish_reason": "length", "generated_tokens": 4, "seed": None,
                               "input_length": 1}
    gen = await post(localtgi, "/generate", body)
    assert last["generated_text"] == gen.json()["generated_text"]
    assert "".join(e["token"]["text"] for e in events) == last["generated_text"]
    no_details = await post(localtgi, "/generate_stream",
                            {"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    final = sse_events(no_details.content)[-1]
    assert final["details"] is None and isinstance(final["generated_text"], str)
    assert "top_tokens" not in final


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"temperature": 0}, "Input validation error: `temperature` must be strictly positive"),
        ({"best_of": 2, "do_sample": True},
         "Input validation error: `best_of` != 1 is not supported when streaming tokens"),
        ({"decoder_input_details": True},
         "Input validation error: `decoder_input_details` == true is not supported when "
         "streaming tokens"),
        ({"top_p": 1.0}, "Input validation error: `top_p` must be > 0.0 and < 1.0"),
    ],
)
async def test_errors_inside_streams(
    localtgi: RunningServer, parameters: dict[str, Any], message: str
) -> None:
    r = await post(localtgi, "/generate_stream", {"inputs": "Hello", "parameters": parameters})
    assert r.status_code == 200
    assert sse_events(r.content) == [{"error": message, "error_type": "validation"}]


async def test_validation_errors_are_422_json(localtgi: RunningServer) -> None:
    r = await post(localtgi, "/generate", {"inputs": "Hello", "parameters": {"temperature": 0}})
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    assert r.json() == {"error": "Input validation error: `temperature` must be strictly positive",
                        "error_type": "validation"}
    assert "x-compute-type" not in r.headers
    r = await post(localtgi, "/", {"inputs": "", "parameters": {}})
    assert r.json()["error"] == "Input validation error: `inputs` cannot be empty"
    r = await post(localtgi, "/generate", {"inputs": "Hello", "parameters": {"best_of": 3}})
    assert r.json()["error"] == "Input validation error: `best_of` must be > 0 and <= 2. Given: 3"
    r = await post(localtgi, "/generate",
                   {"inputs": "Hello", "parameters": {"grammar": {"type": "regex", "value": "("}}})
    assert r.status_code == 422 and r.json()["error_type"] == "validation"


async def test_plain_text_rejections(localtgi: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=localtgi.url, timeout=30) as c:
        r = await c.post("/generate", content=b'{"inputs":', headers=JSON)
        assert r.status_code == 400 and r.text.startswith("Failed to parse the request body as JSON")
        r = await c.post("/generate", content=b'{"inputs":"x"}')
        assert r.status_code == 415
        assert r.text == "Expected request with `Content-Type: application/json`"
        r = await c.post("/generate", json={"inputs": 1})
        assert r.status_code == 422 and r.headers["content-type"].startswith("text/plain")
        assert r.text.startswith("Failed to deserialize the JSON body into the target type: ")
        r = await c.post("/generate", json={"inputs": "x" * 2_000_001})
        assert r.status_code == 413
        r = await c.get("/nope")
        assert r.status_code == 404 and r.content == b""


async def test_finish_reasons_stop_and_grammar(localtgi: RunningServer) -> None:
    base = await post(localtgi, "/generate",
                      {"inputs": "Hello", "parameters": {"max_new_tokens": 6}})
    text = base.json()["generated_text"]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    r = await post(localtgi, "/generate", {"inputs": "Hello", "parameters": {
        "max_new_tokens": 6, "stop": [stop], "details": True}})
    body = r.json()
    assert body["details"]["finish_reason"] == "stop_sequence"
    assert body["generated_text"].endswith(stop) or stop in body["generated_text"]  # kept
    # Bounded, so that greedy noise from the tiny model must close the object within 40 tokens.
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 999}},
              "required": ["n"], "additionalProperties": False}
    r = await post(localtgi, "/generate", {"inputs": "Hello", "parameters": {
        "max_new_tokens": 40, "details": True, "grammar": {"type": "json", "value": schema}}})
    body = r.json()
    assert body["details"]["finish_reason"] == "eos_token", body
    assert isinstance(json.loads(body["generated_text"])["n"], int)
    r = await post(localtgi, "/generate", {"inputs": "Hello", "parameters": {
        "max_new_tokens": 8, "grammar": {"type": "regex", "value": "[0-9]{3}"}, "details": True}})
    body = r.json()
    assert re.fullmatch("[0-9]{3}", body["generated_text"])
    assert body["details"]["finish_reason"] == "eos_token"


async def test_seeded_sampling_is_deterministic(localtgi: RunningServer) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 8, "do_sample": True, "seed": 42,
                                              "temperature": 1.5, "details": True}}
    a, b = await asyncio.gather(post(localtgi, "/generate", body), post(localtgi, "/generate", body))
    da, db = a.json()["details"], b.json()["details"]
    assert a.json()["generated_text"] == b.json()["generated_text"] and da["seed"] == 42
    assert [t["id"] for t in da["tokens"]] == [t["id"] for t in db["tokens"]]
    # Batched rows may differ from each other in the last float bits, not in tokens.
    for x, y in zip(da["tokens"], db["tokens"], strict=True):
        assert x["logprob"] == pytest.approx(y["logprob"], abs=1e-4)
    other = await post(localtgi, "/generate", {**body, "parameters": {**body["parameters"],
                                                                      "seed": 43}})
    assert other.json()["details"]["seed"] == 43


async def test_info_health_tokenize_models_metrics(localtgi: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=localtgi.url, timeout=30) as c:
        info = (await c.get("/info")).json()
        assert info["model_id"] == "tiny" and info["router"] == "text-generation-router"
        assert info["max_total_tokens"] == 2048 and info["max_input_tokens"] == 2047
        assert (info["max_best_of"], info["max_stop_sequences"]) == (2, 4)
        assert info["max_concurrent_requests"] == 128 and info["max_client_batch_size"] == 4
        assert re.fullmatch(r"\d+\.\d+\.\d+.*", info["version"])
        assert info["model_pipeline_tag"] == "text-generation"
        health = await c.get("/health")
        assert health.status_code == 200 and health.content == b""
        tok = (await c.post("/tokenize", json={"inputs": "Hello world"})).json()
        assert tok == [{"id": tok[0]["id"], "text": "Hello", "start": 0, "stop": 5},
                       {"id": tok[1]["id"], "text": " world", "start": 5, "stop": 11}]
        cut = await c.post("/tokenize", json={"inputs": "Hello world",
                                              "parameters": {"truncate": 1}})
        assert cut.json() == tok[1:]
        models = (await c.get("/v1/models")).json()
        assert models == {"object": "list", "data": [
            {"id": "tiny", "object": "model", "created": 0, "owned_by": "tiny"}]}
        await c.post("/generate", json={"inputs": "Hello", "parameters": {"temperature": -1}})
        metrics = (await c.get("/metrics")).text
    for name in ("tgi_request_count ", "tgi_request_success ", "tgi_request_duration_bucket",
                 "tgi_request_generated_tokens_count", "tgi_queue_size ",
                 "tgi_batch_current_size ", "tgi_request_input_length_sum"):
        assert name in metrics, name
    assert re.search(r'tgi_request_failure\{err="validation"\} [1-9]', metrics)


async def test_overloaded_and_disconnect(limited: RunningServer) -> None:
    """--max-concurrent-requests 1: a live stream holds the only permit; closing it frees it."""
    state = limited.state
    async with httpx.AsyncClient(base_url=limited.url, timeout=30) as c:
        async with c.stream("POST", "/generate_stream", json={
            "inputs": "Hello", "parameters": {"max_new_tokens": 1900}}) as stream:
            lines = stream.aiter_lines()
            first = await anext(lines)
            assert first.startswith("data:{")
            assert state.inference.permits.taken == 1
            # The engine emits the first token during prefill, just before the row joins the batch.
            joined_by = time.monotonic() + 1.0
            while state.engine.active != 1:  # noqa: ASYNC110 - polling another thread's state
                assert time.monotonic() < joined_by
                await asyncio.sleep(0.005)
            r = await c.post("/generate", json={"inputs": "Hi", "parameters": {}})
            assert r.status_code == 429 and "retry-after" not in r.headers
            assert r.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
            s = await c.post("/generate_stream", json={"inputs": "Hi"})
            assert s.status_code == 200
            assert sse_events(s.content) == [{"error": "Model is overloaded",
                                              "error_type": "overloaded"}]
        # The client went away mid-stream: the generation leaves the batch and the permit returns.
        started = time.monotonic()
        deadline = started + 1.0  # the 1900 tokens would take several seconds
        while state.engine.active or state.inference.permits.taken:  # noqa: ASYNC110 - polling
            assert time.monotonic() < deadline, "the disconnected stream kept its slot"
            await asyncio.sleep(0.01)
        assert state.engine.active == 0 and state.inference.permits.taken == 0
        r = await c.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
        assert r.status_code == 200
        # Limits of this server: 64 input tokens.
        r = await c.post("/generate", json={"inputs": "word " * 70,
                                            "parameters": {"truncate": 60, "max_new_tokens": 2}})
        assert r.status_code == 200
        r = await c.post("/generate", json={"inputs": "word " * 70,
                                            "parameters": {"max_new_tokens": 1}})
        assert r.status_code == 422
        assert r.json()["error"].startswith("Input validation error: `inputs` must have less "
                                            "than 64 tokens. Given: ")


LONG_STREAMS = [
    ("/generate_stream", {"inputs": "Hello", "parameters": {"max_new_tokens": 1900}}),
    ("/", {"inputs": "Hello", "stream": True, "parameters": {"max_new_tokens": 1900}}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "stream": True,
                              "max_tokens": 1900}),
    ("/v1/completions", {"prompt": "Hello", "stream": True, "max_tokens": 1900}),
]


async def wait_idle(server: RunningServer, within: float = 1.0) -> None:
    state = server.state
    deadline = time.monotonic() + within  # each generation below would take several seconds
    while state.engine.active or state.engine.waiting or state.inference.permits.taken:  # noqa: ASYNC110
        assert time.monotonic() < deadline, "a disconnected client kept its slot"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(("path", "body"), LONG_STREAMS)
async def test_disconnect_frees_the_slot(limited: RunningServer, path: str, body: Any) -> None:
    async with httpx.AsyncClient(base_url=limited.url, timeout=30) as c:
        async with c.stream("POST", path, json=body) as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("data:")
            assert limited.state.inference.permits.taken == 1
    await wait_idle(limited)


async def test_disconnect_during_generate(limited: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=limited.url, timeout=0.3) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 1900}})
    await wait_idle(limited)


async def test_api_key_and_health_aliases(tiny_model: LoadedModel) -> None:
    settings = Settings(model_id="tiny", hostname="127.0.0.1", port=0, api_key="Sekret")
    server = RunningServer(settings, tiny_model).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            body = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
            denied = await c.post("/generate", json=body)
            assert denied.status_code == 401 and denied.content == b""
            wrong = await c.post("/generate", json=body, headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 401
            # TGI compares the header ignoring case. Rejections must leave the connection usable.
            for _ in range(10):
                assert (await c.post("/generate", json=body)).status_code == 401
                ok = await c.post("/generate", json=body, headers={"authorization": "bearer SEKRET"})
                assert ok.status_code == 200
            for path in ("/", "/health", "/ping", "/info", "/metrics", "/v1/models"):
                assert (await c.get(path)).status_code == 200, path
    finally:
        server.close()


async def test_text_generation_07_payload(localtgi: RunningServer) -> None:
    """The body the old `text-generation` 0.7.0 client sends: every field present, most null."""
    parameters = {"best_of": None, "details": True, "decoder_input_details": False,
                  "do_sample": False, "max_new_tokens": 5, "repetition_penalty": None,
                  "frequency_penalty": None, "return_full_text": False, "seed": None, "stop": [],
                  "temperature": None, "top_k": None, "top_n_tokens": None, "top_p": None,
                  "truncate": None, "typical_p": None, "watermark": False, "grammar": None}
    r = await post(localtgi, "/", {"inputs": "Hello", "parameters": parameters, "stream": False})
    [answer] = r.json()
    assert set(answer["details"]) == {"finish_reason", "generated_tokens", "seed", "prefill", "tokens"}
    del parameters["best_of"], parameters["decoder_input_details"]
    s = await post(localtgi, "/", {"inputs": "Hello", "parameters": parameters, "stream": True})
    events = sse_events(s.content)
    assert events[-1]["generated_text"] == answer["generated_text"]
    assert all(e["generated_text"] is None for e in events[:-1])


async def test_engine_stopping_mid_request(tiny_model: LoadedModel) -> None:
    """Unfinished generations end with TGI's incomplete-generation errors (an event on streams)."""
    server = RunningServer(Settings(model_id="tiny", hostname="127.0.0.1", port=0), tiny_model).start()
    long = {"inputs": "Hello", "parameters": {"max_new_tokens": 1900}}
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            async with c.stream("POST", "/generate_stream", json=long) as stream:
                lines = stream.aiter_lines()
                assert (await anext(lines)).startswith("data:{")
                pending = asyncio.ensure_future(c.post("/generate", json=long))
                both_in = time.monotonic() + 2
                while server.state.engine.active < 2:  # noqa: ASYNC110 - polling another thread
                    assert time.monotonic() < both_in
                    await asyncio.sleep(0.005)
                await server.run_on_server(server.state.engine.stop())
                rest = [line async for line in lines if line]
            assert json.loads(rest[-1][len("data:") :]) == {
                "error": "Incomplete generation stream", "error_type": "incomplete_generation_stream"}
            r = await pending
            assert r.status_code == 500
            assert r.json() == {"error": "Incomplete generation", "error_type": "incomplete_generation"}
            assert server.state.inference.permits.taken == 0
            health = await c.get("/health")
            assert health.status_code == 503
            assert health.json() == {"error": "unhealthy", "error_type": "healthcheck"}
    finally:
        server.close()


async def test_dead_model_worker_is_unhealthy_and_fails_requests_at_once(
    tiny_model: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker cannot prepare the network (here: it is no network at all), so it dies at start."""
    broken = dataclasses.replace(tiny_model, network="/nonexistent/network.xml")
    server = RunningServer(Settings(model_id="tiny", hostname="127.0.0.1", port=0), broken).start()
    want = re.compile(r"Request failed during generation: the model worker stopped: \w+")
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            health = await c.get("/health")
            assert health.status_code == 503
            assert health.json() == {"error": "unhealthy", "error_type": "healthcheck"}
            started = time.monotonic()
            r = await c.post("/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 5}})
            assert r.status_code == 424 and r.json()["error_type"] == "generation"
            assert want.match(r.json()["error"]), r.json()
            s = await c.post("/generate_stream", json={"inputs": "Hello"})
            [event] = sse_events(s.content)
            assert event["error_type"] == "generation" and want.match(event["error"])
            o = await c.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 3})
            assert o.status_code == 424
            assert time.monotonic() - started < 2  # nothing waits for a worker that is gone
            assert server.state.inference.permits.taken == 0
    finally:
        server.close()
    died = [r for r in caplog.records if "engine worker died" in r.getMessage()]
    assert len(died) == 1


@pytest.mark.parametrize("depth", [200, 3000])
async def test_deeply_nested_grammar_is_422(localtgi: RunningServer, depth: int) -> None:
    text = '{"type":"object","properties":{"a":' * depth + "{}" + "}}" * depth
    r = await post(localtgi, "/generate",
                   {"inputs": "Hi", "parameters": {"grammar": {"type": "json", "value": text}}})
    assert r.status_code == 422, r.text
    assert r.json() == {"error": "Input validation error: grammar is not valid: nested deeper than 64 levels",
                        "error_type": "validation"}
    if depth == 200:  # the same schema as a JSON object (not a string): the body itself nests
        schema = json.loads(text)  # 400 levels, beyond TGI's JSON parser (128): a 400 before anything
        r = await post(localtgi, "/generate",
                       {"inputs": "Hi", "parameters": {"grammar": {"type": "json", "value": schema}}})
        assert r.status_code == 400
        assert r.text == "Failed to parse the request body as JSON: recursion limit exceeded"
