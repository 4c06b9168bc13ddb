"""OpenAI-compatible upstreams: vLLM, TGI's Messages API, RunPod's `/openai/v1`, happy_vllm.

Use `OpenAIUpstream` with the base URL an OpenAI SDK would take (`http://vllm:8000/v1`; a URL without
a path gets `/v1`). Prompt jobs go to `/completions`, chat jobs to `/chat/completions`. Parameters
arrive in TGI's names and are translated per dialect, avoiding the known traps:

* greedy (no sampling parameter) is `temperature: 0` here, while TGI's `/generate` rejects 0;
* `top_p` is sent only when the job set it (OpenAI's default 1.0 is a 422 on TGI);
* TGI's chat route turns `presence_penalty` p into repetition penalty p + 2, so a repetition penalty
  r goes to TGI chat as `presence_penalty: r - 2`, and nothing is sent when r is unset;
* vLLM silently ignores keys it does not know, so TGI-only keys that would change the answer
  (`typical_p`, `watermark`, ...) are refused with a clear error instead of dropped, and constraints
  use `structured_outputs` (vLLM >= 0.12) or `guided_*` (<= 0.11) as `GET /version` says.

The dialect (`vllm` or `tgi`) and vLLM's constraint form are probed once (`/version`, `/info`) unless
configured. Finish reasons come back in TGI's names: `eos_token`, `length`, `stop_sequence`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from .. import jsontext
from ..constraints import constraint_of, tgi_grammar, vllm_fields
from ..errors import UnsupportedRequestError, UpstreamError, UpstreamProtocolError
from .base import Generation, GenerationRequest, StreamDelta
from .client import FINISH_WAIT, HTTPClient
from .http import event_error, redact, status_error
from .sse import SSEDecoder

Flavor = Literal["vllm", "tgi"]
Form = Literal["structured_outputs", "guided"]
_TGI_ONLY: dict[str, Callable[[Any], bool]] = {  # TGI parameters that change the answer, no equivalent
    "typical_p": lambda v: v is not None,
    "watermark": bool,
    "best_of": lambda v: (v or 1) > 1,
}


@dataclass(frozen=True)
class Dialect:
    """How to talk to one server: `vllm` or `tgi`, vLLM's constraint form, the engine version."""

    flavor: Flavor = "vllm"
    form: Form = "structured_outputs"
    version: str | None = None


def is_sampling(p: dict[str, Any]) -> bool:
    """TGI's rule: a `parameters` object samples when asked to, or when a sampling knob is set."""
    return bool(p.get("do_sample")) or any(
        (
            p.get("temperature") not in (None, 1.0),
            p.get("top_k") is not None,
            p.get("top_p") is not None and p["top_p"] < 1.0,
            p.get("typical_p") is not None and p["typical_p"] < 1.0,
        )
    )


def request_body(
    request: GenerationRequest, dialect: Dialect, *, model: str, stream: bool, where: str
) -> tuple[str, dict[str, Any]]:
    """The route (`/chat/completions` or `/completions`) and JSON body for `request`."""
    p = request.parameters
    chat = request.messages is not None
    tgi = dialect.flavor == "tgi"
    for name, changes in _TGI_ONLY.items():
        if changes(p.get(name)):
            raise UnsupportedRequestError(
                f"`{name}` has no equivalent on {where} (an OpenAI-compatible {dialect.flavor} "
                "server would ignore or reject it); leave it out, or use TGI_INF_UPSTREAM_KIND=tgi"
            )
    body: dict[str, Any] = {"model": p.get("adapter_id") or model}
    if chat:
        body["messages"] = [dict(m) for m in request.messages or ()]
    else:
        body["prompt"] = request.prompt
    if p.get("max_new_tokens") is not None:
        body["max_tokens"] = p["max_new_tokens"]
    if is_sampling(p):
        body["temperature"] = p.get("temperature") if p.get("temperature") is not None else 1.0
    else:
        body["temperature"] = 0.0  # greedy on vLLM and on TGI's OpenAI routes (never on /generate)
    for name in ("top_p", "seed", "stop", "frequency_penalty"):
        if p.get(name) is not None:
            body[name] = p[name]
    for name in ("top_k", "truncate"):
        if tgi and p.get(name) is not None:
            raise UnsupportedRequestError(
                f"`{name}` is not accepted by TGI's OpenAI routes ({where}); leave it out, or use "
                "TGI_INF_UPSTREAM_KIND=tgi (and TGI_INF_CHAT_TEMPLATE for chat jobs)"
            )
    if p.get("top_k") is not None:
        body["top_k"] = p["top_k"]
    if p.get("truncate") is not None:
        body["truncate_prompt_tokens"] = p["truncate"]
    if p.get("repetition_penalty") is not None:
        if tgi and chat:
            # TGI chat: repetition_penalty = presence_penalty + 2.0.
            body["presence_penalty"] = p["repetition_penalty"] - 2.0
        else:
            body["repetition_penalty"] = p["repetition_penalty"]
    if p.get("return_full_text"):
        if chat or tgi:
            raise UnsupportedRequestError(f"`return_full_text` is not available on {where}")
        body["echo"] = True
    constraint = constraint_of(request)
    if constraint is not None:
        if tgi and not chat:
            raise UnsupportedRequestError(
                f"TGI's /v1/completions cannot constrain output ({where}); use "
                "TGI_INF_UPSTREAM_KIND=tgi for prompt jobs with response_pool/json_format/grammar"
            )
        if tgi:
            body["response_format"] = tgi_grammar(constraint)
        else:
            body.update(vllm_fields(constraint, dialect.form))
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return ("/chat/completions" if chat else "/completions"), body


def finish_reason(reason: Any, stop_reason: Any = None) -> str | None:
    """OpenAI-side finish reasons in TGI's names (unknown ones pass through)."""
    if reason in (None, "", "None"):
        return None
    if reason == "stop":
        return "stop_sequence" if stop_reason is not None else "eos_token"
    return str(reason)


def parse_response(payload: Any, *, chat: bool, where: str) -> Generation:
    """A non-stream `chat.completion` / `text_completion` body as a `Generation`."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        if isinstance(payload, dict) and ("error" in payload or payload.get("object") == "error"):
            raise event_error(payload, where)
        raise UpstreamProtocolError(f"upstream answer has no choices ({where})")
    choice = choices[0]
    if chat:
        message = choice.get("message") or {}
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = choice.get("text")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise UpstreamProtocolError(f"upstream answer text is not a string ({where})")
    prompt_tokens, completion_tokens = usage_of(payload)
    return Generation(
        text=text,
        finish_reason=finish_reason(choice.get("finish_reason"), choice.get("stop_reason")),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def usage_of(payload: dict[str, Any]) -> tuple[int | None, int | None]:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


@dataclass
class ChunkReader:
    """Reads stream chunks (`chat.completion.chunk` / `text_completion`) one by one; `feed` gives
    the text of each, `final` the closing delta once the stream is over."""

    where: str
    finish: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    seen: bool = field(default=False)

    def feed(self, payload: Any) -> str:
        if not isinstance(payload, dict):
            raise UpstreamProtocolError(f"upstream stream chunk is not an object ({self.where})")
        if "error" in payload or payload.get("object") == "error":
            raise event_error(payload, self.where)
        self.seen = True
        prompt, completion = usage_of(payload)
        if prompt is not None or completion is not None:
            self.prompt_tokens, self.completion_tokens = prompt, completion
        text = []
        for choice in payload.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(piece, str):
                text.append(piece)
            reason = finish_reason(choice.get("finish_reason"), choice.get("stop_reason"))
            if reason is not None:
                self.finish = reason
        return "".join(text)

    def final(self) -> StreamDelta:
        if self.finish is None:
            raise UpstreamProtocolError(f"upstream stream ended without a finish reason ({self.where})")
        return StreamDelta(
            text="",
            finish_reason=self.finish,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )


def _version_form(version: str | None) -> Form:
    match = re.match(r"v?(\d+)\.(\d+)", version or "")
    if match and (int(match[1]), int(match[2])) <= (0, 11):
        return "guided"
    return "structured_outputs"


class OpenAIUpstream:
    """An OpenAI-compatible server at `url` (its `/v1` base), through the process's `HTTPClient`."""

    def __init__(
        self,
        client: HTTPClient,
        url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        flavor: Literal["auto", "vllm", "tgi"] = "auto",
        structured: Literal["auto", "structured_outputs", "guided"] = "auto",
    ) -> None:
        url = url.rstrip("/")
        if urlsplit(url).path in ("", "/"):
            url += "/v1"
        self._client = client
        self._url = url
        self._root = url[: -len("/v1")] if url.endswith("/v1") else url
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        self._flavor = flavor
        self._structured = structured
        self._dialect: Dialect | None = None
        self._lock = asyncio.Lock()

    @property
    def url(self) -> str:
        return self._url

    async def dialect(self) -> Dialect:
        """The server's dialect, probed once (not cached while the server cannot be reached)."""
        if self._dialect is not None:
            return self._dialect
        async with self._lock:
            if self._dialect is None:
                dialect, certain = await self._probe()
                if not certain:
                    return dialect
                self._dialect = dialect
        return self._dialect

    async def _probe(self) -> tuple[Dialect, bool]:
        forced: Form | None = None if self._structured == "auto" else self._structured
        if self._flavor == "tgi":
            return Dialect("tgi"), True
        answered = False
        version: str | None = None
        flavor: Flavor = "vllm"
        for url, key in (
            (self._root + "/version", "version"),  # vLLM
            (self._url + "/info", "vllm_version"),  # happy_vllm
            (self._root + "/info", "router"),  # TGI
        ):
            try:
                response = await self._client.get(url, headers=self._headers)
            except UpstreamError:
                continue
            answered = True
            if response.status != 200:
                continue
            try:
                payload = response.json()
            except ValueError:
                continue
            value = payload.get(key) if isinstance(payload, dict) else None
            if not isinstance(value, str):
                continue
            if key == "router":
                if self._flavor == "auto":
                    flavor = "tgi"
                version = payload.get("version") if isinstance(payload.get("version"), str) else None
            else:
                version = value
            break
        return Dialect(flavor, forced or _version_form(version), version), answered

    async def model(self) -> str:
        """The configured model name, else "tgi" for TGI, else the first of `GET /models`."""
        if self._model is not None:
            return self._model
        if (await self.dialect()).flavor == "tgi":
            return "tgi"
        self._model = await self._listed_model()
        return self._model

    async def _listed_model(self) -> str:
        payload = await self._get("/models")
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or not data or not isinstance(data[0], dict):
            raise UpstreamProtocolError(f"upstream /models lists no model ({redact(self._url)})")
        return str(data[0].get("id"))

    async def _get(self, path: str) -> Any:
        url = self._url + path
        response = await self._client.get(url, headers=self._headers)
        if response.status != 200:
            raise status_error(response.status, response.body, url)
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamProtocolError(f"upstream answered non-JSON at {redact(url)}") from exc

    async def _build(self, request: GenerationRequest, *, stream: bool) -> tuple[str, dict[str, Any]]:
        dialect = await self.dialect()
        route, body = request_body(
            request, dialect, model=await self.model(), stream=stream, where=redact(self._url)
        )
        return self._url + route, body

    async def generate(self, request: GenerationRequest) -> Generation:
        url, body = await self._build(request, stream=False)
        response = await self._client.post(url, json=body, headers=self._headers)
        if response.status != 200:
            raise status_error(response.status, response.body, url)
        try:
            payload = response.json()
        except ValueError as exc:
            raise UpstreamProtocolError(f"upstream answered non-JSON at {redact(url)}") from exc
        return parse_response(payload, chat=request.messages is not None, where=redact(url))

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamDelta, None]:
        url, body = await self._build(request, stream=True)
        reader = ChunkReader(redact(url))
        async with self._client.stream("POST", url, json=body, headers=self._headers) as response:
            if response.status != 200:
                raise status_error(response.status, await response.read(), url)
            decoder = SSEDecoder()
            async for chunk in response.chunks():
                text, failure = _read(reader, decoder.feed(chunk), url)
                if text:
                    yield StreamDelta(text=text)
                if failure is not None:  # after the text that came before it
                    raise failure
                if decoder.done:
                    await response.finish(FINISH_WAIT)  # the connection then serves the next request
                    break
            text, failure = _read(reader, decoder.close(), url)
            if text:
                yield StreamDelta(text=text)
            if failure is not None:
                raise failure
        yield reader.final()

    async def info(self) -> dict[str, Any]:
        dialect = await self.dialect()
        # The served model's real name, also on TGI, whose requests call it "tgi".
        model = self._model or await self._listed_model()
        return {"model_id": model, "version": dialect.version, "engine": dialect.flavor}

    async def health(self) -> None:
        """Raises unless `GET /models` answers 200 (the route every compatible server has)."""
        await self._get("/models")

    async def aclose(self) -> None:
        """Nothing runs in the background here."""


def _read(reader: ChunkReader, events: list[bytes], url: str) -> tuple[str, UpstreamError | None]:
    """The text of stream chunks that arrived together, and the error an error chunk raised."""
    pieces = []
    for data in events:
        try:
            try:
                payload = jsontext.parse(data)
            except ValueError as exc:
                raise UpstreamProtocolError(f"upstream stream event is not JSON ({redact(url)})") from exc
            pieces.append(reader.feed(payload))
        except UpstreamError as exc:
            return "".join(pieces), exc
    return "".join(pieces), None
