"""Server-sent events as LLM servers send them.

Use `events` on an httpx streaming response. It tolerates every framing seen in the field: `data:` with
or without a space (TGI omits it, vLLM adds it), `:` keep-alive comments, `event:`/`id:` fields,
multi-line data, and a `[DONE]` terminator (vLLM, TGI chat) or none (TGI generate).
"""

from __future__ import annotations

from collections.abc import AsyncIterator


async def events(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The `data` payload of each event, in order, until `[DONE]` or the end of the stream."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                payload = "\n".join(data)
                data.clear()
                if payload == "[DONE]":
                    return
                yield payload
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name != "data":
            continue
        data.append(value[1:] if value.startswith(" ") else value)
    if data:
        payload = "\n".join(data)
        if payload != "[DONE]":
            yield payload
