"""The plumbing both route sets share: reading a request body, writing compact JSON, SSE responses
with TGI's headers, `/tokenize` items and the prompt-size header.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel
from quart import Response, request

from localtgi import sse
from localtgi.app_state import server
from localtgi.protocol import SimpleToken, parse_body
from localtgi.tokenizer import Tokenizer

KEEPALIVE_SECONDS = 15.0
RequestT = TypeVar("RequestT", bound=BaseModel)


async def read_body(model: type[RequestT]) -> RequestT:
    """The request body parsed as `model`, or a plain-text 400/413/415/422 (RequestBodyError)."""
    raw: bytes = await request.get_data(as_text=False)  # type: ignore[assignment]
    return parse_body(model, raw, request.headers.get("content-type"), limit=server().settings.payload_limit)


def compact_json(payload: Any) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return Response(body, content_type="application/json")


def sse_response(body: AsyncIterator[bytes], chars: int) -> Response:
    srv = server()
    headers = dict(sse.HEADERS)
    headers["x-compute-type"] = srv.settings.compute_type
    headers["x-compute-characters"] = str(chars)
    response = Response(body, content_type="text/event-stream", headers=headers)
    response.timeout = None
    return response


def simple_tokens(
    tokenizer: Tokenizer, text: str, *, add_special_tokens: bool, truncate: int | None = None
) -> list[dict[str, Any]]:
    """TGI's /tokenize items for `text` (blocking): id, text and character offsets; tokens without a
    span (added specials) show their own text."""
    ids, offsets = tokenizer.encode_with_offsets(text, add_special_tokens=add_special_tokens)
    pairs = list(zip(ids, offsets, strict=True))
    if truncate:
        pairs = pairs[-truncate:]
    out = []
    for token_id, (start, stop) in pairs:
        piece = text[start:stop] if stop > start else tokenizer.decode([token_id])
        out.append(SimpleToken(id=token_id, text=piece, start=start, stop=stop).wire())
    return out


def prompt_chars(inputs: Sequence[str] | str) -> int:
    """x-compute-characters: Unicode scalar count of the prompt(s)."""
    if isinstance(inputs, str):
        return len(inputs)
    return sum(len(s) for s in inputs)
