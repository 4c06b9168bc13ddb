"""RunPod's serverless queue API in front of worker-vllm: `/runsync`, `/run`, `/stream/{id}`, `/status/{id}`.

Use `RunPodUpstream` with the endpoint's base URL (`https://api.runpod.ai/v2/<endpoint id>`) and its API
key. Jobs are sent as `{"input": {"openai_route", "openai_input"}}`, which worker-vllm v2.x and the
2026 proxy worker both hand to vLLM's OpenAI server, so chat, constraints (vLLM's form), usage and
finish reasons work as with `OpenAIUpstream`. `/runsync` may come back unfinished: then `/status/{id}`
is polled. Streams are `/run` then `/stream/{id}` polled until the job is final; each polled chunk is
raw SSE text (`RAW_OPENAI_OUTPUT=1`, the default) or chunk objects, and both are read. A stream closed
early cancels the job.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any, Literal

from ..errors import (
    UpstreamError,
    UpstreamGenerationError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from .base import Generation, GenerationRequest, StreamDelta
from .client import HTTPClient
from .http import redact, status_error
from .openai import ChunkReader, Dialect, parse_response, request_body

PENDING = ("IN_QUEUE", "IN_PROGRESS")


class RunPodUpstream:
    """A RunPod serverless endpoint running worker-vllm, called through its queue API."""

    def __init__(
        self,
        client: HTTPClient,
        url: str,
        *,
        api_key: str | None,
        model: str,
        structured: Literal["auto", "structured_outputs", "guided"] = "auto",
        poll_interval: float = 0.5,
        sync_wait: float = 20.0,
    ) -> None:
        self._client = client
        self._url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        form = "structured_outputs" if structured == "auto" else structured
        self._dialect = Dialect("vllm", form)
        self._poll = poll_interval
        self._sync_wait_ms = int(min(max(sync_wait, 1.0), 300.0) * 1000)  # RunPod: 1 s to 300 s

    @property
    def url(self) -> str:
        return self._url

    def _input(self, request: GenerationRequest, *, stream: bool) -> dict[str, Any]:
        route, body = request_body(
            request, self._dialect, model=self._model, stream=stream, where=redact(self._url)
        )
        return {"input": {"openai_route": "/v1" + route, "openai_input": body}}

    async def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        url = self._url + path
        response = await self._client.request(method, url, json=body, headers=self._headers)
        if response.status != 200:
            raise status_error(response.status, response.body, url)
        try:
            payload = response.json()
        except ValueError as exc:
            raise UpstreamProtocolError(f"upstream answered non-JSON at {redact(url)}") from exc
        if not isinstance(payload, dict):
            raise UpstreamProtocolError(f"upstream answer is not an object ({redact(url)})")
        return payload

    async def generate(self, request: GenerationRequest) -> Generation:
        # `wait` keeps /runsync shorter than our read timeout: a timed-out /runsync would be retried
        # as a second job, while an unfinished answer is simply polled.
        job = await self._call(
            "POST", f"/runsync?wait={self._sync_wait_ms}", self._input(request, stream=False)
        )
        try:
            while job.get("status") in PENDING:
                await asyncio.sleep(self._poll)
                job = await self._call("GET", f"/status/{_job_id(job, self._url)}")
        except BaseException:
            if job.get("status") in PENDING and isinstance(job.get("id"), str):
                await self._cancel(job["id"])  # deadline or disconnect: stop paying for the job
            raise
        self._raise_unless_completed(job)
        return _generation(job.get("output"), chat=request.messages is not None, where=redact(self._url))

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamDelta, None]:
        job = await self._call("POST", "/run", self._input(request, stream=True))
        job_id = _job_id(job, self._url)
        reader = ChunkReader(redact(self._url))
        pending = ""  # raw SSE text of an event split across two polled chunks
        finished = False
        try:
            while True:
                polled = await self._call("GET", f"/stream/{job_id}")
                items = polled.get("stream") or []
                for item in items:
                    output = item.get("output") if isinstance(item, dict) else item
                    if isinstance(output, str):
                        pending += output
                        *complete, pending = pending.replace("\r\n", "\n").split("\n\n")
                        payloads = [_sse_data(block) for block in complete]
                    else:
                        payloads = output if isinstance(output, list) else [output]
                    for payload in payloads:
                        if payload is None:
                            continue
                        text = _legacy_text(payload, reader) if _is_legacy(payload) else reader.feed(payload)
                        if text:
                            yield StreamDelta(text=text)
                status = polled.get("status")
                if status not in PENDING and not items:
                    if pending.strip():
                        payload = _sse_data(pending)
                        if payload is not None:
                            text = reader.feed(payload)
                            if text:
                                yield StreamDelta(text=text)
                    if status != "COMPLETED":
                        self._raise_unless_completed(await self._call("GET", f"/status/{job_id}"))
                    break
                if not items:
                    await asyncio.sleep(self._poll)
            finished = True
        finally:
            if not finished:
                await self._cancel(job_id)
        if reader.finish is None and reader.seen:  # worker-vllm's own output has no finish reason
            yield StreamDelta("", None, reader.prompt_tokens, reader.completion_tokens)
            return
        yield reader.final()

    async def _cancel(self, job_id: str) -> None:
        try:
            await asyncio.shield(self._client.post(f"{self._url}/cancel/{job_id}", headers=self._headers))
        except (UpstreamError, asyncio.CancelledError):
            pass  # best effort: the job's executionTimeout ends it anyway

    def _raise_unless_completed(self, job: dict[str, Any]) -> None:
        status = job.get("status")
        if status == "COMPLETED":
            return
        where = redact(self._url)
        detail = job.get("error")
        if not isinstance(detail, str):
            detail = json.dumps(detail) if detail is not None else "no error message"
        if status == "TIMED_OUT":
            raise UpstreamTimeoutError(f"RunPod job {job.get('id')} timed out at {where}: {detail}")
        if status in ("FAILED", "CANCELLED"):
            raise UpstreamGenerationError(f"RunPod job {job.get('id')} {status.lower()} at {where}: {detail}")
        raise UpstreamProtocolError(f"RunPod job has an unknown status {status!r} at {where}")

    async def info(self) -> dict[str, Any]:
        return {"model_id": self._model, "version": None, "engine": "runpod"}

    async def health(self) -> None:
        """Raises unless the endpoint's `GET /health` answers 200."""
        await self._call("GET", "/health")

    async def aclose(self) -> None:
        """Nothing runs in the background here."""


def _job_id(job: dict[str, Any], url: str) -> str:
    job_id = job.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise UpstreamProtocolError(f"RunPod answer has no job id ({redact(url)})")
    return job_id


def _sse_data(block: str) -> Any:
    lines = [line for line in block.split("\n") if line.startswith("data:")]
    if not lines:
        return None
    data = "\n".join(line[5:].removeprefix(" ") for line in lines)
    if data.strip() == "[DONE]":
        return None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise UpstreamProtocolError("RunPod stream chunk is not SSE JSON") from exc


def _is_legacy(payload: Any) -> bool:
    choices = payload.get("choices") if isinstance(payload, dict) else None
    return isinstance(choices, list) and bool(choices) and isinstance(choices[0], dict) and (
        "tokens" in choices[0]
    )


def _legacy_text(payload: dict[str, Any], reader: ChunkReader) -> str:
    """worker-vllm's own output, `{"choices":[{"tokens":[...]}],"usage":{"input","output"}}`."""
    reader.seen = True
    usage = payload.get("usage") or {}
    if isinstance(usage.get("input"), int):
        reader.prompt_tokens = usage["input"]
    if isinstance(usage.get("output"), int):
        reader.completion_tokens = usage["output"]
    return "".join(str(t) for t in payload["choices"][0].get("tokens") or ())


def _generation(output: Any, *, chat: bool, where: str) -> Generation:
    """A completed job's `output`: vLLM's response, or the list of all yields (aggregate)."""
    items = output if isinstance(output, list) else [output]
    if not items:
        raise UpstreamProtocolError(f"RunPod job completed without output ({where})")
    if len(items) == 1 and not _is_legacy(items[0]):
        return parse_response(items[0], chat=chat, where=where)
    reader = ChunkReader(where)
    text = "".join(_legacy_text(item, reader) if _is_legacy(item) else reader.feed(item) for item in items)
    return Generation(
        text=text,
        finish_reason=reader.finish,
        prompt_tokens=reader.prompt_tokens,
        completion_tokens=reader.completion_tokens,
    )
