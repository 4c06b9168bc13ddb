"""Real clients against a hypercorn-served localtgi: huggingface_hub's AsyncInferenceClient on the TGI
routes, the `openai` SDK on the /v1 routes."""

from __future__ import annotations

import httpx
import openai
import pytest
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import ValidationError as HubValidationError

from localtgikit import RunningServer


async def test_hub_text_generation(localtgi: RunningServer) -> None:
    client = AsyncInferenceClient(model=localtgi.url)
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{localtgi.url}/generate",
                            json={"inputs": "Hello", "parameters": {"max_new_tokens": 5}})
    reference = r.json()
    text = await client.text_generation("Hello", max_new_tokens=5, return_full_text=False)
    assert text == reference["generated_text"]
    out = await client.text_generation("Hello", max_new_tokens=5, details=True, seed=3,
                                       do_sample=True, decoder_input_details=True, top_n_tokens=2)
    assert out.details is not None and out.details.generated_tokens == 5
    assert out.details.finish_reason == "length" and out.details.seed == 3
    assert out.details.prefill[0].logprob is None and len(out.details.tokens) == 5
    assert len(out.details.top_tokens[0]) == 2
    # Through POST / a null return_full_text means the prompt comes back in front.
    assert out.generated_text.startswith("Hello")

    pieces = [p async for p in await client.text_generation(
        "Hello", max_new_tokens=5, stream=True, return_full_text=False)]
    assert "".join(pieces) == reference["generated_text"]
    events = [e async for e in await client.text_generation(
        "Hello", max_new_tokens=5, stream=True, details=True, return_full_text=False)]
    assert [e.index for e in events] == [1, 2, 3, 4, 5]
    assert events[-1].generated_text == reference["generated_text"]
    assert events[-1].details is not None and events[-1].details.finish_reason == "length"
    assert events[0].generated_text is None

    with pytest.raises(HubValidationError, match="`temperature` must be strictly positive"):
        await client.text_generation("Hello", temperature=-1.0)
    with pytest.raises(HubValidationError, match="`top_p` must be > 0.0 and < 1.0"):
        async for _ in await client.text_generation("Hello", top_p=1.0, stream=True):
            pass


async def test_openai_sdk(localtgi: RunningServer) -> None:
    async with openai.AsyncOpenAI(base_url=f"{localtgi.url}/v1", api_key="-",
                                  max_retries=0) as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == ["tiny"]
        messages: list[openai.types.chat.ChatCompletionMessageParam] = [
            {"role": "user", "content": "Hi"}]
        chat = await client.chat.completions.create(
            model="tgi", messages=messages, max_tokens=4, temperature=0)
        assert chat.choices[0].finish_reason == "length"
        assert chat.usage is not None and chat.usage.completion_tokens == 4
        content = chat.choices[0].message.content

        stream = await client.chat.completions.create(
            model="tgi", messages=messages, max_tokens=4, temperature=0, stream=True,
            stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.total_tokens == chat.usage.total_tokens

        done = await client.completions.create(model="tgi", prompt=["Hello", "Hi"], max_tokens=3,
                                               temperature=0)
        assert len(done.choices) == 2 and done.usage is not None
        assert done.usage.completion_tokens == 6
        parts = [c async for c in await client.completions.create(
            model="tgi", prompt="Hello", max_tokens=3, temperature=0, stream=True)]
        assert "".join(p.choices[0].text for p in parts) == done.choices[0].text
        assert parts[-1].usage is not None and parts[-1].usage.completion_tokens == 3

        with pytest.raises(openai.UnprocessableEntityError) as info:
            await client.chat.completions.create(model="tgi", messages=messages, top_p=1.0)
        # The SDK hands over the `error` member of TGI's {"error","error_type"} body.
        assert info.value.body == "Input validation error: `top_p` must be > 0.0 and < 1.0"
        with pytest.raises(openai.APIError, match="top_p"):
            async for _ in await client.chat.completions.create(
                model="tgi", messages=messages, top_p=1.0, stream=True):
                pass


async def test_hub_chat_completion(localtgi: RunningServer) -> None:
    client = AsyncInferenceClient(base_url=localtgi.url)
    messages = [{"role": "user", "content": "Hi"}]
    out = await client.chat_completion(messages, max_tokens=4, temperature=0)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 4
    chunks = [c async for c in await client.chat_completion(
        messages, max_tokens=4, temperature=0, stream=True)]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == out.choices[0].message.content
