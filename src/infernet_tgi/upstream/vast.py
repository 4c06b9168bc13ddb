"""Vast.ai serverless (TGI template): ask the router for a worker, then call the worker with the ticket.

Use `VastUpstream` with the route server's base URL (`https://run.vast.ai`), the endpoint group name
and the Vast API key. Each call is two requests:

1. `POST {route}/route/ {"endpoint", "api_key", "cost"}`; a reply without `url` (no worker ready yet)
   is polled again with backoff, up to `route_wait` seconds.
2. `POST {url}/generate` or `/generate_stream` with `{"auth_data": <ticket>, "payload": {"inputs",
   "parameters"}}`. The ticket is echoed **byte for byte** as the router sent it: its signature covers
   a serialization of those values, and re-encoding could change a float's spelling or an escape.

`cost` is the configured one, else the job's `max_new_tokens` (the TGI worker's own workload measure).
The legacy worker forwards only `inputs` and `max_new_tokens` to TGI: other parameters, constraints
included, are sent but may be dropped there, which the answer check then reports. Vast has no chat
route (chat jobs need `TGI_INF_CHAT_TEMPLATE`), and its worker empties error bodies.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from ..constraints import constraint_of, tgi_grammar
from ..errors import UnsupportedRequestError, UpstreamProtocolError, UpstreamUnavailableError
from .base import Generation, GenerationRequest, StreamDelta
from .client import HTTPClient
from .http import redact, status_error
from .tgi import tgi_stream

JSON_HEADERS = {"content-type": "application/json"}


class VastUpstream:
    """A Vast.ai serverless endpoint group running the TGI template."""

    def __init__(
        self,
        client: HTTPClient,
        url: str,
        *,
        api_key: str | None,
        endpoint: str,
        cost: float | None = None,
        route_wait: float = 30.0,
        poll_interval: float = 0.5,
    ) -> None:
        self._client = client
        self._url = url.rstrip("/")
        self._api_key = api_key or ""
        self._endpoint = endpoint
        self._cost = cost
        self._route_wait = route_wait
        self._poll = poll_interval

    @property
    def url(self) -> str:
        return self._url

    async def ticket(self, cost: float) -> tuple[bytes, str]:
        """The router's ticket as the exact bytes it sent, and the worker URL in it."""
        route = self._url + "/route/"
        body = {"endpoint": self._endpoint, "api_key": self._api_key, "cost": cost}
        deadline = time.monotonic() + self._route_wait
        wait = self._poll
        while True:
            response = await self._client.post(route, json=body)
            if response.status != 200:
                raise status_error(response.status, response.body, route)
            raw = response.body.strip()
            try:
                ticket = json.loads(raw)
            except ValueError as exc:
                raise UpstreamProtocolError(f"Vast route answered non-JSON at {redact(route)}") from exc
            if not isinstance(ticket, dict):
                raise UpstreamProtocolError(f"Vast route answer is not an object ({redact(route)})")
            worker = ticket.get("url")
            if isinstance(worker, str) and worker:
                return raw, worker.rstrip("/")
            if time.monotonic() + wait > deadline:
                status = ticket.get("status") or ticket.get("error") or "no worker url in the reply"
                raise UpstreamUnavailableError(
                    f"no Vast worker ready for endpoint {self._endpoint!r} within "
                    f"{self._route_wait:g} s ({redact(route)}): {status}"
                )
            await asyncio.sleep(wait)
            wait = min(wait * 2, 5.0)

    def _payload(self, request: GenerationRequest) -> dict[str, Any]:
        if request.messages is not None:
            raise UnsupportedRequestError(
                "Vast's TGI workers have no chat route: chat jobs need TGI_INF_CHAT_TEMPLATE "
                "(e.g. chatml, llama3) so that messages become a prompt"
            )
        parameters = {**request.parameters, "details": True}
        parameters.setdefault("max_new_tokens", 256)  # the worker requires it
        constraint = constraint_of(request)
        if constraint is not None:
            parameters["grammar"] = tgi_grammar(constraint)
        return {"inputs": request.prompt, "parameters": parameters}

    async def _prepare(self, request: GenerationRequest, path: str) -> tuple[str, bytes]:
        payload = self._payload(request)
        cost = self._cost if self._cost is not None else payload["parameters"]["max_new_tokens"]
        raw_ticket, worker = await self.ticket(cost)
        # Spliced, not re-encoded: the worker checks the signature against the ticket's own values.
        body = b'{"auth_data":' + raw_ticket + b',"payload":' + json.dumps(payload).encode() + b"}"
        return worker + path, body

    async def generate(self, request: GenerationRequest) -> Generation:
        url, body = await self._prepare(request, "/generate")
        response = await self._client.post(url, content=body, headers=JSON_HEADERS)
        if response.status != 200:
            raise status_error(response.status, response.body, url)
        try:
            payload = response.json()
        except ValueError as exc:
            raise UpstreamProtocolError(f"Vast worker answered non-JSON at {redact(url)}") from exc
        if isinstance(payload, list) and payload:
            payload = payload[0]
        if not isinstance(payload, dict) or not isinstance(payload.get("generated_text"), str):
            raise UpstreamProtocolError(f"Vast worker answer has no generated_text ({redact(url)})")
        details = payload.get("details") or {}
        prompt_tokens = response.headers.get("x-prompt-tokens")
        return Generation(
            text=payload["generated_text"],
            finish_reason=details.get("finish_reason"),
            prompt_tokens=int(prompt_tokens) if prompt_tokens and prompt_tokens.isdigit() else None,
            completion_tokens=details.get("generated_tokens"),
        )

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamDelta, None]:
        url, body = await self._prepare(request, "/generate_stream")
        # The worker relays TGI's SSE unchanged.
        async with aclosing(tgi_stream(self._client, url, content=body, headers=JSON_HEADERS)) as deltas:
            async for delta in deltas:
                yield delta

    async def info(self) -> dict[str, Any]:
        return {"model_id": None, "version": None, "engine": "vast", "endpoint": self._endpoint}

    async def health(self) -> None:
        """Always passes: every call asks the router for a ready worker, which is the real check
        (asking it here would reserve a worker for nothing)."""

    async def aclose(self) -> None:
        """Nothing runs in the background here."""
