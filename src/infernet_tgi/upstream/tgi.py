"""TGI's native protocol: `POST /generate`, `POST /generate_stream` and `POST /chat_tokenize`.

Use `TGIUpstream` for Hugging Face TGI, localtgi, and anything that speaks TGI's generate routes
(DataCrunch and Vast wrap it). It always asks for `details` so finish reasons and token counts are
known, drops special tokens from streams (the reference leaks `</s>`), and checks every stream event
for an in-band error. A stream yields one delta per chunk read from the socket, with the text of every
token event in it: tokens that arrived together leave together. `chat_prompt` renders a chat with the
served model's own template (`/chat_tokenize`, docs/protocol.md §3.5), so chats can go to `/generate`
with every TGI parameter.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from .. import jsontext
from ..errors import UpstreamError, UpstreamProtocolError
from .base import Generation, GenerationRequest, StreamDelta
from .client import FINISH_WAIT, HTTPClient
from .http import event_error, redact, status_error
from .sse import SSEDecoder


class TGIUpstream:
    """A TGI server at `url`, called through the process's `HTTPClient`."""

    def __init__(
        self,
        client: HTTPClient,
        url: str,
        *,
        generate_path: str = "/generate",
        stream_path: str = "/generate_stream",
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        self._client = client
        self._url = url.rstrip("/")
        self._generate_url = self._url + generate_path
        self._stream_url = self._url + stream_path
        self._extra = dict(extra_body or {})
        self._chat_tokenize = True  # until the server shows it has no such route
        self._added_prefix: tuple[int, ...] | None = None  # ids /generate adds in front (a BOS)

    @property
    def url(self) -> str:
        return self._url

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        parameters = {**request.parameters, "details": True}
        return {**self._extra, "inputs": request.prompt, "parameters": parameters}

    async def generate(self, request: GenerationRequest) -> Generation:
        response = await self._client.post(self._generate_url, json=self._body(request))
        if response.status != 200:
            raise status_error(response.status, response.body, self._generate_url)
        payload = _decode(response.body, self._generate_url)
        if isinstance(payload, list) and payload:  # `POST /` and some gateways answer a list
            payload = payload[0]
        if not isinstance(payload, dict) or not isinstance(payload.get("generated_text"), str):
            raise UpstreamProtocolError(
                f"upstream answer has no generated_text ({redact(self._generate_url)})"
            )
        details = payload.get("details") or {}
        return Generation(
            text=payload["generated_text"],
            finish_reason=details.get("finish_reason"),
            prompt_tokens=_int_header(response.headers.get("x-prompt-tokens")),
            completion_tokens=details.get("generated_tokens"),
        )

    def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamDelta, None]:
        return tgi_stream(self._client, self._stream_url, json=self._body(request))

    async def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str | None:
        """The prompt the served model's chat template makes of `messages`, ready for `/generate`;
        None when the server cannot render it (no `/chat_tokenize`: TGI before 2.2, or a model without
        a fast tokenizer; both answer 404). A template error is the server's 422."""
        if not self._chat_tokenize:
            return None
        url = self._url + "/chat_tokenize"
        body = {"model": "tgi", "messages": [dict(m) for m in messages]}
        response = await self._client.post(url, json=body)
        if response.status == 404:
            self._chat_tokenize = False
            return None
        if response.status != 200:
            raise status_error(response.status, response.body, url)
        payload = _decode(response.body, url)
        text = payload.get("templated_text") if isinstance(payload, dict) else None
        tokens = payload.get("tokenize_response") if isinstance(payload, dict) else None
        if not isinstance(text, str) or not isinstance(tokens, list):
            raise UpstreamProtocolError(
                f"upstream /chat_tokenize answer has no templated_text ({redact(url)})"
            )
        return await self._without_added_prefix(text, tokens)

    async def _without_added_prefix(self, text: str, tokens: list[Any]) -> str:
        # /generate tokenizes its input with the tokenizer's special tokens (a Llama BOS), and most
        # templates write that BOS themselves: sent as is, the model would see it twice.
        prefix = await self._prefix_ids()
        if len(prefix) != 1 or not tokens or not isinstance(tokens[0], dict):
            return text
        first = tokens[0]
        piece = first.get("text")
        if first.get("id") == prefix[0] and isinstance(piece, str) and piece and text.startswith(piece):
            return text[len(piece) :]
        return text

    async def _prefix_ids(self) -> tuple[int, ...]:
        """The ids the server's tokenizer puts before any text (`/tokenize` shows them with an
        empty span); asked once. A server that will not say is taken to add none."""
        if self._added_prefix is not None:
            return self._added_prefix
        url = self._url + "/tokenize"
        response = await self._client.post(url, json={"inputs": "a"})
        prefix: list[int] = []
        payload = _decode(response.body, url) if response.status == 200 else None
        for token in payload if isinstance(payload, list) else []:
            if not isinstance(token, dict) or token.get("start") != 0 or token.get("stop") != 0:
                break
            if isinstance(token.get("id"), int):
                prefix.append(token["id"])
        self._added_prefix = tuple(prefix)
        return self._added_prefix

    async def info(self) -> dict[str, Any]:
        url = self._url + "/info"
        response = await self._client.get(url)
        if response.status != 200:
            raise status_error(response.status, response.body, url)
        payload = _decode(response.body, url)
        if not isinstance(payload, dict):
            raise UpstreamProtocolError(f"upstream /info is not an object ({redact(url)})")
        return payload

    async def health(self) -> None:
        """Raises unless `GET /health` answers 200."""
        url = self._url + "/health"
        response = await self._client.get(url)
        if response.status != 200:
            raise status_error(response.status, response.body, url)

    async def aclose(self) -> None:
        """Nothing runs in the background here."""


async def tgi_stream(
    client: HTTPClient,
    url: str,
    *,
    json: Any = None,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> AsyncGenerator[StreamDelta, None]:
    """POST to a TGI `generate_stream` route (or anything relaying it) and read its SSE: text
    deltas without special tokens, then the final event's finish reason and counts. Error events
    inside the 200 stream raise, as does a stream that ends before its final event."""
    async with client.stream("POST", url, json=json, content=content, headers=headers) as response:
        if response.status != 200:
            raise status_error(response.status, await response.read(), url)
        decoder = SSEDecoder()
        async for chunk in response.chunks():
            text, final, failure = _read(decoder.feed(chunk), url)
            if final is not None:
                yield final
                await response.finish(FINISH_WAIT)  # the connection then serves the next request
                return
            if text:
                yield StreamDelta(text=text)
            if failure is not None:  # after the tokens that came before it
                raise failure
        text, final, failure = _read(decoder.close(), url)
        if final is not None:
            yield final
            return
        if text:
            yield StreamDelta(text=text)
        if failure is not None:
            raise failure
    raise UpstreamProtocolError(f"upstream stream ended before its final event ({redact(url)})")


def _read(events: list[bytes], url: str) -> tuple[str, StreamDelta | None, UpstreamError | None]:
    """Events that arrived together: the text of their tokens, the closing delta if the final event
    is among them (carrying all the text), and the error an error event raised (after the text)."""
    pieces: list[str] = []
    for data in events:
        try:
            payload = _decode(data, url)
            if not isinstance(payload, dict):
                raise UpstreamProtocolError(f"upstream stream event is not an object ({redact(url)})")
            if "error" in payload:
                raise event_error(payload, url)
        except UpstreamError as exc:
            return "".join(pieces), None, exc
        token = payload.get("token") or {}
        if isinstance(token, dict) and not token.get("special"):
            text = token.get("text")
            if isinstance(text, str) and text:
                pieces.append(text)
        details = payload.get("details")
        if payload.get("generated_text") is not None or details:
            details = details if isinstance(details, dict) else {}
            final = StreamDelta(
                text="".join(pieces),
                finish_reason=details.get("finish_reason"),
                prompt_tokens=details.get("input_length"),
                completion_tokens=details.get("generated_tokens"),
            )
            return final.text, final, None
    return "".join(pieces), None, None


def _decode(content: bytes, url: str) -> Any:
    try:
        return jsontext.parse(content)
    except ValueError as exc:
        raise UpstreamProtocolError(f"upstream answered non-JSON at {redact(url)}") from exc


def _int_header(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
