"""TGI's native routes: `/`, `/generate`, `/generate_stream`, `/info`, `/health`, `/tokenize`, `/metrics`.

Register `routes` on the app (create_app does). Response shapes, omission rules, SSE framing and the
x-compute-* headers follow TGI (docs/protocol.md §3).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from quart import Blueprint, Response

from localtgi import sse
from localtgi.app_state import ROUTER, Server, server
from localtgi.engine_types import FinishEvent, SamplingParams, TokenEvent, TopToken
from localtgi.error_responses import stream_error
from localtgi.errors import LocalTGIError
from localtgi.inference import Generated, Outcome
from localtgi.protocol import (
    BestOfSequence,
    CompatGenerateRequest,
    Details,
    GenerateParameters,
    GenerateRequest,
    GenerateResponse,
    Info,
    PrefillToken,
    StreamDetails,
    StreamResponse,
    Token,
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
from localtgi.validation import check_stream

routes = Blueprint("tgi", __name__)



def wire_token(t: TokenEvent | TopToken) -> Token:
    return Token(id=t.id, text=t.text, logprob=t.logprob, special=t.special)


def _top_tokens(seq: Generated, top_n: int) -> list[list[Token]]:
    if top_n == 0:
        return []
    return [[wire_token(t) for t in tok.top_tokens] for tok in seq.tokens]


def _full_text(outcome_inputs: str, text: str, return_full_text: bool) -> str:
    return outcome_inputs + text if return_full_text else text


def generate_response(outcome: Outcome) -> GenerateResponse:
    """TGI's GenerateResponse for a finished request (details only when asked for)."""
    req = outcome.request
    best = outcome.best
    text = _full_text(req.inputs, best.finish.generated_text, req.return_full_text)
    if not (req.details or req.decoder_input_details):
        return GenerateResponse(generated_text=text)
    prefill = [PrefillToken(id=p.id, text=p.text, logprob=p.logprob) for p in outcome.prefill]
    top_n = req.params.top_n_tokens
    others = None
    if outcome.others:
        others = [
            BestOfSequence(
                generated_text=_full_text(req.inputs, s.finish.generated_text, req.return_full_text),
                finish_reason=s.finish.finish_reason,
                generated_tokens=s.finish.generated_tokens,
                seed=s.finish.seed,
                prefill=prefill,
                tokens=[wire_token(t) for t in s.tokens],
                top_tokens=_top_tokens(s, top_n),
            )
            for s in outcome.others
        ]
    details = Details(
        finish_reason=best.finish.finish_reason,
        generated_tokens=best.finish.generated_tokens,
        seed=best.finish.seed,
        prefill=prefill,
        tokens=[wire_token(t) for t in best.tokens],
        top_tokens=_top_tokens(best, top_n),
        best_of_sequences=others,
    )
    return GenerateResponse(generated_text=text, details=details)


def compute_headers(srv: Server, outcome: Outcome) -> dict[str, str]:
    t = outcome.timings
    generated = outcome.best.finish.generated_tokens

    def ms(seconds: float) -> str:
        return str(int(seconds * 1000))

    return {
        "x-compute-type": srv.settings.compute_type,
        "x-compute-time": f"{t.total:.6f}",
        "x-compute-characters": str(prompt_chars(outcome.request.inputs)),
        "x-total-time": ms(t.total),
        "x-validation-time": ms(t.validation),
        "x-queue-time": ms(t.queue),
        "x-inference-time": ms(t.inference),
        "x-time-per-token": ms(t.per_token(generated)),
        "x-prompt-tokens": str(outcome.request.input_length),
        "x-generated-tokens": str(generated),
    }


async def tgi_events(parameters: GenerateParameters, stream: TokenStream) -> AsyncIterator[bytes]:
    """The SSE body of `/generate_stream`: token events, then errors as events (HTTP stays 200)."""
    try:
        check_stream(parameters)
        async with aclosing(sse.with_keepalive(stream.tokens(), KEEPALIVE_SECONDS)) as items:
            async for item in items:
                if item is None:
                    yield sse.KEEPALIVE
                    continue
                token, finish = item
                top = [wire_token(t) for t in token.top_tokens]
                event = StreamResponse(index=token.index, token=wire_token(token), top_tokens=top)
                if finish is not None:
                    req = stream.request
                    assert req is not None
                    event.generated_text = _full_text(req.inputs, finish.generated_text, req.return_full_text)
                    if req.details:
                        event.details = stream_details(finish, req.input_length)
                yield sse.event(event.wire())
    except LocalTGIError as exc:
        yield sse.event(stream_error(exc))


def stream_details(finish: FinishEvent, input_length: int) -> StreamDetails:
    return StreamDetails(
        finish_reason=finish.finish_reason,
        generated_tokens=finish.generated_tokens,
        seed=finish.seed,
        input_length=input_length,
    )


def _stream(req: GenerateRequest, *, return_full_text_default: bool) -> Response:
    stream = server().inference.stream(
        req.inputs, req.parameters, return_full_text_default=return_full_text_default
    )
    return sse_response(tgi_events(req.parameters, stream), prompt_chars(req.inputs))


async def _generate(req: GenerateRequest, *, return_full_text_default: bool) -> Response:
    srv = server()
    outcome = await srv.inference.generate(
        req.inputs, req.parameters, return_full_text_default=return_full_text_default
    )
    return Response(
        generate_response(outcome).model_dump_json(),
        content_type="application/json",
        headers=compute_headers(srv, outcome),
    )


@routes.post("/")
async def compat_generate() -> Response:
    req = await read_body(CompatGenerateRequest)
    # TGI: a null return_full_text becomes true on this route for text-generation models (ours).
    if req.stream:
        return _stream(req, return_full_text_default=True)
    response = await _generate(req, return_full_text_default=True)
    response.set_data(b"[" + await response.get_data(as_text=False) + b"]")
    return response


@routes.post("/generate")
async def generate() -> Response:
    return await _generate(await read_body(GenerateRequest), return_full_text_default=False)


@routes.post("/generate_stream")
async def generate_stream() -> Response:
    return _stream(await read_body(GenerateRequest), return_full_text_default=False)


@routes.get("/info")
async def info() -> dict[str, Any]:
    srv = server()
    return Info(
        model_id=srv.model_id,
        model_sha=None,
        model_pipeline_tag="text-generation",
        max_concurrent_requests=srv.settings.max_concurrent_requests,
        max_best_of=srv.limits.max_best_of,
        max_stop_sequences=srv.limits.max_stop_sequences,
        max_input_tokens=srv.limits.max_input_tokens,
        max_total_tokens=srv.limits.max_total_tokens,
        validation_workers=1,
        max_client_batch_size=srv.limits.max_client_batch_size,
        router=ROUTER,
        version=srv.version,
        sha=None,
        docker_label=None,
    ).wire()


@routes.get("/")
@routes.get("/health")
@routes.get("/ping")
async def health() -> Response:
    """200 with an empty body once the network is compiled and warmed up and while the engine
    accepts work, else TGI's 503 healthcheck error."""
    srv = server()
    healthy = srv.healthy and srv.engine.warm
    if healthy:
        # Queue a one-token probe and withdraw it at once: submit refuses when the engine is down.
        probe = [min(srv.model.eos_token_ids)]
        try:
            srv.engine.submit(probe, SamplingParams(max_new_tokens=1)).cancel()
        except LocalTGIError:
            healthy = False
    if not healthy:
        return Response(
            '{"error":"unhealthy","error_type":"healthcheck"}',
            status=503,
            content_type="application/json",
        )
    return Response(b"", status=200, content_type="text/plain")


@routes.post("/tokenize")
async def tokenize() -> Response:
    req = await read_body(GenerateRequest)
    tokens = await asyncio.to_thread(
        simple_tokens,
        server().model.tokenizer,
        req.inputs,
        add_special_tokens=True,
        truncate=req.parameters.truncate,
    )
    return compact_json(tokens)


@routes.get("/metrics")
async def metrics() -> Response:
    return Response(server().metrics.render(), content_type="text/plain; version=0.0.4")
