"""The OpenAI-compatible routes as TGI serves them: `/v1/chat/completions`, `/v1/completions`,
`/v1/models` and `/chat_tokenize`.

Register `routes` on the app (create_app does). Requests are translated into TGI `GenerateParameters`
with TGI's mapping rules (docs/protocol.md §3.6: temperature 0 means greedy, presence_penalty p becomes
repetition_penalty p + 2, top_p passes through so 1.0 is a 422, ...) and run through the same validation.
Streams are framed `data: {...}` and end with `data: [DONE]`; errors inside a stream are
`{"error":{"message","http_status_code":422}}` events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

import jinja2
from quart import Blueprint, Response

from localtgi import sse
from localtgi.app_state import Server, server
from localtgi.engine_types import FinishEvent, TokenEvent
from localtgi.error_responses import error_message
from localtgi.errors import (
    LocalTGIError,
    RequestBodyError,
    RequestRejectedError,
    TemplateError,
    ValidationError,
)
from localtgi.inference import Outcome, gather_all
from localtgi.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatError,
    ChatErrorEvent,
    ChatLogprobs,
    ChatMessage,
    ChatRequest,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    GenerateParameters,
    ModelCard,
    ModelList,
    OutputMessage,
    TextChunk,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from localtgi.responses import (
    KEEPALIVE_SECONDS,
    compact_json,
    prompt_chars,
    read_body,
    simple_tokens,
    sse_response,
)
from localtgi.token_stream import TokenStream

routes = Blueprint("openai", __name__)

_CHAT_FINISH = {"eos_token": "stop", "length": "length", "stop_sequence": "stop_sequence"}


def _greedy_or_sampled(temperature: float | None) -> tuple[bool, float | None]:
    # TGI: temperature 0 selects greedy decoding; anything else, including none, samples.
    if temperature == 0.0:
        return False, None
    return True, temperature


def _stops(stop: list[str] | str | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def chat_parameters(req: ChatRequest) -> GenerateParameters:
    """TGI's ChatRequest -> GenerateParameters mapping."""
    do_sample, temperature = _greedy_or_sampled(req.temperature)
    return GenerateParameters(
        temperature=temperature,
        repetition_penalty=None if req.presence_penalty is None else req.presence_penalty + 2.0,
        frequency_penalty=req.frequency_penalty,
        top_p=req.top_p,
        do_sample=do_sample,
        max_new_tokens=req.max_tokens,
        stop=_stops(req.stop),
        details=True,
        seed=req.seed,
        top_n_tokens=req.top_logprobs,
        grammar=req.response_format,
    )


def _message_dict(message: ChatMessage) -> dict[str, str]:
    content = message.content
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        if any(not isinstance(part, TextChunk) for part in content):
            raise ValidationError("image inputs are not supported by this model")
        text = "".join(part.text for part in content if isinstance(part, TextChunk))
    return {"role": message.role, "content": text}


async def render_chat(srv: Server, messages: Sequence[ChatMessage]) -> str:
    """The prompt the model's own chat template makes of `messages` (rendered in a worker thread)."""
    tokenizer = srv.model.tokenizer
    if tokenizer.chat_template is None:
        raise TemplateError("this model has no chat template")
    conversation = [_message_dict(m) for m in messages]

    def render() -> str:
        return str(tokenizer.apply_chat_template(conversation, add_generation_prompt=True))

    try:
        return await asyncio.to_thread(render)
    except jinja2.TemplateError as exc:
        raise TemplateError(str(exc)) from None


def _logprobs(tokens: Sequence[TokenEvent]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            TokenLogprob(
                token=t.text,
                logprob=t.logprob,
                top_logprobs=[TopLogprob(token=x.text, logprob=x.logprob) for x in t.top_tokens],
            )
            for t in tokens
        ]
    )


def _usage(prompt: int, completion: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _stream_error(exc: LocalTGIError) -> bytes:
    # TGI reports every in-stream error on these routes as a 422.
    payload = ChatErrorEvent(error=ChatError(message=error_message(exc), http_status_code=422))
    return sse.event(payload.wire(), space=True)


@routes.post("/v1/chat/completions")
async def chat_completions() -> Response:
    req = await read_body(ChatRequest)
    srv = server()
    if req.tools and req.response_format is not None:
        raise RequestRejectedError("tool_error", "Grammar and tools are mutually exclusive")
    if req.tools and req.tool_choice != "none":
        raise RequestRejectedError("tool_error", "tools are not supported by localtgi")
    parameters = chat_parameters(req)
    prompt = await render_chat(srv, req.messages)
    if req.stream:
        stream = srv.inference.stream(prompt, parameters, add_special_tokens=False)
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        body = _chat_events(srv, stream, bool(req.logprobs), include_usage)
        return sse_response(body, prompt_chars(prompt))
    outcome = await srv.inference.generate(prompt, parameters, add_special_tokens=False)
    best = outcome.best
    completion = ChatCompletion(
        created=int(time.time()),
        model=srv.model_id,
        system_fingerprint=srv.system_fingerprint,
        choices=[
            ChatChoice(
                index=0,
                message=OutputMessage(content=best.finish.generated_text),
                logprobs=_logprobs(best.tokens) if req.logprobs else None,
                finish_reason=_CHAT_FINISH[best.finish.finish_reason],
            )
        ],
        usage=_usage(outcome.request.input_length, best.finish.generated_tokens),
    )
    return _json(completion.model_dump_json(), outcome)


def _json(body: str, *outcomes: Outcome) -> Response:
    srv = server()
    headers = {
        "x-compute-type": srv.settings.compute_type,
        "x-compute-characters": str(sum(prompt_chars(o.request.inputs) for o in outcomes)),
        "x-compute-time": f"{max(o.timings.total for o in outcomes):.6f}",
        "x-prompt-tokens": str(sum(o.request.input_length for o in outcomes)),
        "x-generated-tokens": str(sum(o.best.finish.generated_tokens for o in outcomes)),
    }
    return Response(body, content_type="application/json", headers=headers)


async def _chat_events(
    srv: Server, stream: TokenStream, logprobs: bool, include_usage: bool
) -> AsyncIterator[bytes]:
    created = int(time.time())

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> bytes:
        payload = ChatCompletionChunk(
            created=created,
            model=srv.model_id,
            system_fingerprint=srv.system_fingerprint,
            choices=choices,
            usage=usage,
        )
        return sse.event(payload.wire(), space=True)

    try:
        async with aclosing(sse.with_keepalive(stream.tokens(), KEEPALIVE_SECONDS)) as items:
            async for item in items:
                if item is None:
                    yield sse.KEEPALIVE
                    continue
                token, finish = item
                choice = ChatChunkChoice(
                    index=0,
                    delta=ChatDelta(content="" if token.special else token.text),
                    logprobs=_logprobs([token]) if logprobs else None,
                    finish_reason=None if finish is None else _CHAT_FINISH[finish.finish_reason],
                )
                yield chunk([choice])
                if finish is not None and include_usage:
                    assert stream.request is not None
                    yield chunk([], _usage(stream.request.input_length, finish.generated_tokens))
    except LocalTGIError as exc:
        yield _stream_error(exc)
    yield sse.DONE


@routes.post("/chat_tokenize")
async def chat_tokenize() -> Response:
    """The chat template applied and tokenized: what the model would see for these messages."""
    req = await read_body(ChatRequest)
    srv = server()
    prompt = await render_chat(srv, req.messages)
    tokens = await asyncio.to_thread(simple_tokens, srv.model.tokenizer, prompt, add_special_tokens=False)
    return compact_json({"tokenize_response": tokens, "templated_text": prompt})


# TGI's completions route generates 100 tokens when `max_tokens` is not given.
COMPLETION_MAX_TOKENS = 100


def completion_parameters(req: CompletionRequest) -> GenerateParameters:
    """TGI's CompletionRequest -> GenerateParameters mapping."""
    do_sample, temperature = _greedy_or_sampled(req.temperature)
    return GenerateParameters(
        temperature=temperature,
        repetition_penalty=req.repetition_penalty,
        frequency_penalty=req.frequency_penalty,
        top_p=req.top_p,
        do_sample=do_sample,
        max_new_tokens=COMPLETION_MAX_TOKENS if req.max_tokens is None else req.max_tokens,
        stop=_stops(req.stop),
        details=True,
        seed=req.seed,
    )


@routes.post("/v1/completions")
async def completions() -> Response:
    req = await read_body(CompletionRequest)
    srv = server()
    if req.suffix is not None:
        raise RequestRejectedError(
            "suffix not supported",
            "Suffix is not supported and can be achieved by preprocessing the prompt.",
        )
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not prompts:
        raise RequestBodyError(
            422,
            "Failed to deserialize the JSON body into the target type: prompt: "
            "Empty array detected. Do not use an empty array for the prompt.",
        )
    if len(prompts) > srv.limits.max_client_batch_size:
        raise RequestRejectedError(
            "batch size exceeded",
            f"Number of prompts exceeds the maximum allowed batch size of {srv.limits.max_client_batch_size}",
        )
    parameters = completion_parameters(req)
    if req.stream:
        streams = [srv.inference.stream(p, parameters) for p in prompts]
        return sse_response(_completion_events(srv, streams), prompt_chars(prompts))
    outcomes = await gather_all([srv.inference.generate(p, parameters) for p in prompts])
    completion = Completion(
        created=int(time.time()),
        model=srv.model_id,
        system_fingerprint=srv.system_fingerprint,
        choices=[
            CompletionChoice(
                index=i,
                text=o.best.finish.generated_text,
                finish_reason=_CHAT_FINISH[o.best.finish.finish_reason],
            )
            for i, o in enumerate(outcomes)
        ],
        usage=_usage(
            sum(o.request.input_length for o in outcomes),
            sum(o.best.finish.generated_tokens for o in outcomes),
        ),
    )
    return _json(completion.model_dump_json(), *outcomes)


_END = object()


async def _pump(
    index: int,
    source: AsyncIterator[tuple[TokenEvent, FinishEvent | None]],
    queue: asyncio.Queue[tuple[int, Any]],
) -> None:
    try:
        async for item in source:
            queue.put_nowait((index, item))
        queue.put_nowait((index, _END))
    except LocalTGIError as exc:
        queue.put_nowait((index, exc))
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


async def _merged(
    streams: Sequence[TokenStream],
) -> AsyncGenerator[tuple[int, tuple[TokenEvent, FinishEvent | None]], None]:
    """Interleave several token streams; the first error ends the whole merge."""
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    tasks = [asyncio.ensure_future(_pump(i, s.tokens(), queue)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, LocalTGIError):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _completion_events(srv: Server, streams: Sequence[TokenStream]) -> AsyncIterator[bytes]:
    created = int(time.time())
    try:
        async with aclosing(sse.with_keepalive(_merged(streams), KEEPALIVE_SECONDS)) as items:
            async for item in items:
                if item is None:
                    yield sse.KEEPALIVE
                    continue
                index, (token, finish) = item
                usage = None
                reason = ""
                if finish is not None:
                    request = streams[index].request
                    assert request is not None
                    reason = finish.finish_reason
                    usage = _usage(request.input_length, finish.generated_tokens)
                payload = CompletionChunk(
                    created=created,
                    model=srv.model_id,
                    system_fingerprint=srv.system_fingerprint,
                    choices=[
                        # As TGI: the token's own text, special tokens included.
                        CompletionChoice(index=index, text=token.text, finish_reason=reason)
                    ],
                    usage=usage,
                )
                yield sse.event(payload.wire(), space=True)
    except LocalTGIError as exc:
        yield _stream_error(exc)
    yield sse.DONE


@routes.get("/v1/models")
async def models() -> dict[str, Any]:
    model_id = server().model_id
    return ModelList(data=[ModelCard(id=model_id, owned_by=model_id)]).wire()
