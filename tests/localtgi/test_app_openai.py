"""The /v1 routes over real HTTP: chat and completions shapes, streams, TGI's mapping and errors."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from localtgikit import RunningServer

CHAT = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}


def v1_events(raw: bytes) -> list[Any]:
    """OpenAI-style SSE: `data: ` + JSON per event, the last one `data: [DONE]`."""
    text = raw.decode()
    blocks = text[:-2].split("\n\n")
    assert text.endswith("\n\n") and blocks[-1] == "data: [DONE]"
    out = []
    for block in blocks[:-1]:
        assert block.startswith("data: {"), block
        out.append(json.loads(block[len("data: ") :]))
    return out


async def post(server: RunningServer, path: str, body: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        return await client.post(path, json=body)


async def test_chat_completion_uses_template_and_reports_usage(localtgi: RunningServer) -> None:
    r = await post(localtgi, "/v1/chat/completions",
                   {**CHAT, "max_tokens": 5, "temperature": 0, "logprobs": True, "top_logprobs": 2})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"] == "" and body["model"] == "tiny"
    assert body["system_fingerprint"].endswith("-native")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["content"]) == 5
    assert all(len(c["top_logprobs"]) == 2 for c in choice["logprobs"]["content"])
    # The prompt is the model's ChatML template with the assistant turn opened.
    tok = localtgi.state.model.tokenizer
    prompt = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
              "<|im_start|>assistant\n")
    prompt_tokens = len(tok.encode(prompt, add_special_tokens=False))
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 5,
                             "total_tokens": prompt_tokens + 5}
    gen = await post(localtgi, "/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 5}})
    assert choice["message"]["content"] == gen.json()["generated_text"]  # temperature 0 = greedy


async def test_chat_stream(localtgi: RunningServer) -> None:
    r = await post(localtgi, "/v1/chat/completions",
                   {**CHAT, "max_tokens": 4, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = v1_events(r.content)
    chunks, usage = events[:-1], events[-1]
    assert len(chunks) == 4
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and c["id"] == ""
        assert c["choices"][0]["delta"]["role"] == "assistant"  # role in every delta
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4
    full = await post(localtgi, "/v1/chat/completions", {**CHAT, "max_tokens": 4,
                                                         "temperature": 0})
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert text == full.json()["choices"][0]["message"]["content"]


async def test_chat_errors(localtgi: RunningServer) -> None:
    # top_p passes through, so OpenAI's default 1.0 is TGI's 422.
    r = await post(localtgi, "/v1/chat/completions", {**CHAT, "top_p": 1.0})
    assert r.status_code == 422
    assert r.json() == {"error": "Input validation error: `top_p` must be > 0.0 and < 1.0",
                        "error_type": "validation"}
    s = await post(localtgi, "/v1/chat/completions", {**CHAT, "top_p": 1.0, "stream": True})
    assert s.status_code == 200
    assert v1_events(s.content) == [{"error": {
        "message": "Input validation error: `top_p` must be > 0.0 and < 1.0",
        "http_status_code": 422}}]
    r = await post(localtgi, "/v1/chat/completions",
                   {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}],
                    "response_format": {"type": "json", "value": {"properties": {}}}})
    assert r.status_code == 422 and r.json()["error_type"] == "tool_error"
    r = await post(localtgi, "/v1/chat/completions", {**CHAT, "logit_bias": {"5": 1}})
    assert r.status_code == 422 and r.text.startswith("Failed to deserialize")


async def test_chat_response_format(localtgi: RunningServer) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    r = await post(localtgi, "/v1/chat/completions",
                   {**CHAT, "max_tokens": 40, "temperature": 0,
                    "response_format": {"type": "json_schema",
                                        "value": {"name": "n", "schema": schema}}})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert isinstance(json.loads(choice["message"]["content"])["ok"], bool)


async def test_completions(localtgi: RunningServer) -> None:
    r = await post(localtgi, "/v1/completions",
                   {"prompt": ["Hello", "Hello world"], "max_tokens": 3, "temperature": 0})
    body = r.json()
    assert body["object"] == "text_completion" and body["id"] == ""
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    assert r.headers["x-prompt-tokens"] == "3" and r.headers["x-compute-characters"] == "16"
    gen = await post(localtgi, "/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 3}})
    assert body["choices"][0]["text"] == gen.json()["generated_text"]

    s = await post(localtgi, "/v1/completions",
                   {"prompt": ["Hello", "Hello world"], "max_tokens": 3, "temperature": 0,
                    "stream": True})
    chunks = v1_events(s.content)
    assert len(chunks) == 6
    for index in (0, 1):
        mine = [c for c in chunks if c["choices"][0]["index"] == index]
        assert [c["choices"][0]["finish_reason"] for c in mine] == ["", "", "length"]
        assert mine[-1]["usage"]["completion_tokens"] == 3 and "usage" not in mine[0]
    first = "".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == 0)
    assert first == body["choices"][0]["text"]


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        ({"prompt": "Hi", "suffix": "x"}, 422, "suffix not supported"),
        ({"prompt": ["a", "b", "c", "d", "e"]}, 422, "batch size exceeded"),
        ({"prompt": "Hi", "temperature": -1}, 422, "validation"),
    ],
)
async def test_completion_errors(
    localtgi: RunningServer, body: dict[str, Any], status: int, error_type: str
) -> None:
    r = await post(localtgi, "/v1/completions", body)
    assert r.status_code == status and r.json()["error_type"] == error_type


async def test_completion_stream_error_event(localtgi: RunningServer) -> None:
    r = await post(localtgi, "/v1/completions", {"prompt": "Hi", "top_p": 2, "stream": True})
    assert r.status_code == 200
    events = v1_events(r.content)
    assert events[0]["error"]["http_status_code"] == 422
    r = await post(localtgi, "/v1/completions", {"prompt": [], "max_tokens": 2})
    assert r.status_code == 422 and "Empty array" in r.text


async def test_chat_tokenize(localtgi: RunningServer) -> None:
    r = await post(localtgi, "/chat_tokenize", CHAT)
    body = r.json()
    prompt = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
              "<|im_start|>assistant\n")
    assert body["templated_text"] == prompt
    assert "".join(t["text"] for t in body["tokenize_response"]) == prompt
    assert body["tokenize_response"][0] == {"id": localtgi.state.model.tokenizer.convert_tokens_to_ids(
        "<|im_start|>"), "text": "<|im_start|>", "start": 0, "stop": 12}


async def test_completions_default_max_tokens(localtgi: RunningServer) -> None:
    r = await post(localtgi, "/v1/completions", {"prompt": "Hello", "temperature": 0,
                                                 "stop": ["@@@"]})
    body = r.json()
    # TGI's default for this route is 100 new tokens (not "up to max_total_tokens").
    assert body["choices"][0]["finish_reason"] == "length", body
    assert body["usage"]["completion_tokens"] == 100
