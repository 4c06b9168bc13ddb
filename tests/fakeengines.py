"""Scriptable loopback fakes of the engines the container can call: a vLLM-style OpenAI server, RunPod's
queue API, and Vast's route server + TGI worker pair (with real RSA signatures).

Each fake is a small HTTP/1.1 server on 127.0.0.1 in its own thread and event loop (like `faketgi`),
records what it received in `requests`, and answers from rules that follow the public documentation
(docs/protocol.md §4, §5, §6). Use them as context managers.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from json.decoder import scanstring
from typing import Any

from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes


@dataclass
class Reply:
    """A whole answer, or (`chunks`) a body written piece by piece with `delay` between pieces."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    chunks: list[bytes] | None = None
    delay: float = 0.0

    @classmethod
    def json(cls, payload: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(payload).encode())


class LoopbackServer:
    """The HTTP plumbing shared by the fakes; subclasses implement `answer`."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def posts(self, suffix: str = "") -> list[Seen]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith(suffix)]

    async def answer(self, req: Seen) -> Reply:
        raise NotImplementedError

    def __enter__(self) -> Any:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                req = Seen(method, path, headers, body, raw)
                with self.lock:
                    self.requests.append(req)
                reply = await self.answer(req)
                if reply.chunks is None:
                    writer.write(
                        f"HTTP/1.1 {reply.status} X\r\ncontent-type: {reply.content_type}\r\n"
                        f"content-length: {len(reply.body)}\r\n\r\n".encode()
                        + reply.body
                    )
                    await writer.drain()
                    continue
                writer.write(
                    f"HTTP/1.1 {reply.status} OK\r\ncontent-type: {reply.content_type}\r\n"
                    "connection: close\r\n\r\n".encode()
                )
                for chunk in reply.chunks:
                    if reply.delay:
                        await asyncio.sleep(reply.delay)
                    writer.write(chunk)
                    await writer.drain()
                return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()


# --------------------------------------------------------------------------------------------------
# vLLM's OpenAI-compatible server


def sample_for(schema: dict[str, Any]) -> Any:
    """A small value matching a simple JSON schema (what a constrained model would produce)."""
    kind = schema.get("type")
    if kind == "object":
        return {k: sample_for(v) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [sample_for(schema.get("items", {"type": "string"}))]
    return {"string": "Ada", "integer": 36, "number": 1.65, "boolean": False}.get(str(kind), None)


@dataclass
class Framing:
    """How a stream is framed: `data: ` or `data:`, a `[DONE]`, keep-alive comments, an error event
    (`nested` since vLLM 0.10.1, `flat` before) after `error_after` chunks."""

    space: bool = True
    done: bool = True
    keepalive: bool = False
    error_after: int | None = None
    error_style: str = "nested"
    crlf: bool = False


@dataclass
class FakeVLLM(LoopbackServer):
    """vLLM's OpenAI server. `version` picks the constraint keys it honours (`guided_*` up to 0.11,
    `structured_outputs` from 0.12); like vLLM, it ignores every key it does not know."""

    version: str | None = "0.12.0"
    model: str = "fake/vllm-model"
    api_key: str | None = None
    framing: Framing = field(default_factory=Framing)
    status: Reply | None = None
    happy: bool = False  # happy_vllm: no /version, but /v1/info with vllm_version


    def __post_init__(self) -> None:
        LoopbackServer.__init__(self)

    def honours(self) -> str:
        parts = tuple(int(x) for x in (self.version or "0.12").split(".")[:2])
        return "guided" if parts <= (0, 11) else "structured_outputs"

    def constrained(self, body: dict[str, Any]) -> str | None:
        """The answer a constrained model gives, or None when the request is not (seen as) constrained."""
        spec: dict[str, Any] = {}
        if self.honours() == "structured_outputs":
            spec = body.get("structured_outputs") or {}
        else:
            spec = {k[len("guided_") :]: v for k, v in body.items() if k.startswith("guided_")}
        if "choice" in spec:
            return str(spec["choice"][-1])
        if "json" in spec:
            return json.dumps(sample_for(spec["json"]))
        if "regex" in spec:
            return "regex"
        return None

    async def answer(self, req: Seen) -> Reply:
        if req.method == "GET":
            if req.path == "/version" and self.version is not None and not self.happy:
                return Reply.json({"version": self.version})
            if req.path == "/v1/info" and self.happy:
                return Reply.json({"application": "happy_vllm", "version": "1.1.15",
                                   "vllm_version": self.version, "model_name": self.model})
            if req.path == "/v1/models":
                return Reply.json({"object": "list", "data": [{"id": self.model, "owned_by": "vllm"}]})
            if req.path == "/health":
                return Reply()
            return Reply(404, b'{"detail":"Not Found"}')
        if self.api_key is not None and req.headers.get("authorization") != f"Bearer {self.api_key}":
            error = {"message": "Unauthorized", "type": "Unauthorized", "code": 401}
            return Reply.json({"error": error}, 401)
        if self.status is not None:
            return self.status
        body = req.body if isinstance(req.body, dict) else {}
        if body.get("model") != self.model:
            return Reply.json(
                {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                           "type": "NotFoundError", "param": None, "code": 404}},
                404,
            )
        chat = req.path.endswith("/chat/completions")
        if chat:
            asked = body["messages"][-1]["content"]
        else:
            asked = body.get("prompt", "")
        text = self.constrained(body)
        if text is None:
            text = f"echo: {asked}"
        words = text.split(" ")
        usage = {"prompt_tokens": len(str(asked).split()), "completion_tokens": len(words)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        stop_reason = "###" if body.get("stop") else None
        if not body.get("stream"):
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "stop_reason": stop_reason}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            return Reply.json(
                {"id": "cmpl-1", "object": "chat.completion" if chat else "text_completion",
                 "model": self.model, "choices": [choice], "usage": usage}
            )
        return Reply(content_type="text/event-stream", chunks=list(self._events(body, chat, words, usage)))

    def _events(
        self, body: dict[str, Any], chat: bool, words: list[str], usage: dict[str, int]
    ) -> list[bytes]:
        f = self.framing
        nl = b"\r\n" if f.crlf else b"\n"

        def event(payload: Any) -> bytes:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            return (b"data: " if f.space else b"data:") + data.encode() + nl + nl

        def chunk(piece: str | None, finish: str | None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chat:
                choice["delta"] = {} if piece is None else {"content": piece}
            else:
                choice["text"] = piece or ""
            return {"id": "x", "object": "chat.completion.chunk" if chat else "text_completion",
                    "choices": [choice]}

        out: list[bytes] = []
        if chat:
            out.append(event({"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
        for i, word in enumerate(words):
            if f.error_after is not None and i == f.error_after:
                if f.error_style == "nested":
                    error: Any = {"error": {"message": "engine died", "type": "InternalServerError",
                                            "param": None, "code": 500}}
                else:
                    error = {"object": "error", "message": "bad thing", "type": "BadRequestError",
                             "param": None, "code": 400}
                out.append(event(error))
                if f.done:
                    out.append(event("[DONE]"))
                return out
            if f.keepalive:
                out.append(b": keep-alive" + nl + nl)
            out.append(event(chunk(word if i == 0 else " " + word, None)))
        out.append(event(chunk(None if chat else "", "stop")))
        if (body.get("stream_options") or {}).get("include_usage"):
            out.append(event({"id": "x", "choices": [], "usage": usage}))
        if f.done:
            out.append(event("[DONE]"))
        return out


# --------------------------------------------------------------------------------------------------
# RunPod's queue API in front of worker-vllm


@dataclass
class FakeRunPod(LoopbackServer):
    """RunPod's `/v2/{endpoint}` queue API. Jobs carry `openai_route`/`openai_input`, answered by an
    inner vLLM rule set. `pending_polls` makes `/runsync` come back IN_PROGRESS and `/status` need that
    many polls; `fail` makes jobs FAILED; `raw_sse` picks the streamed chunk form; `batches` the
    1/3/9/... batch sizes of a stream, in SSE events per poll."""

    api_key: str = "rp-key"
    endpoint: str = "ep123"
    pending_polls: int = 0
    fail: str | None = None
    raw_sse: bool = True
    batches: tuple[int, ...] = (1, 3, 9, 27, 50)
    vllm: FakeVLLM = field(default_factory=lambda: FakeVLLM(version="0.12.0", model="rp/model"))
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    sync_waits: list[str] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        LoopbackServer.__init__(self)

    @property
    def base(self) -> str:
        return f"{self.url}/v2/{self.endpoint}"

    async def _run_vllm(self, job_input: dict[str, Any]) -> tuple[Any, list[bytes]]:
        body = dict(job_input["openai_input"])
        route = job_input["openai_route"]
        reply = await self.vllm.answer(Seen("POST", route, {}, body, b""))
        if reply.chunks is not None:
            return None, reply.chunks
        return json.loads(reply.body), []

    async def answer(self, req: Seen) -> Reply:
        prefix = f"/v2/{self.endpoint}"
        if req.headers.get("authorization") != f"Bearer {self.api_key}":
            return Reply(401, b"")
        path, _, query = req.path.removeprefix(prefix).partition("?")
        if path == "/runsync" and query:
            self.sync_waits.append(query)
        if path == "/health" and req.method == "GET":
            return Reply.json({"jobs": {}, "workers": {"idle": 1}})
        if req.method == "POST" and path in ("/runsync", "/run"):
            job_id = f"job-{next(self._ids)}"
            if not isinstance(req.body, dict) or not isinstance(req.body.get("input"), dict):
                return Reply(400, b'{"error":"input is required"}')
            output, chunks = await self._run_vllm(req.body["input"])
            status = "FAILED" if self.fail else "COMPLETED"
            job = {"id": job_id, "status": status, "output": [output] if output is not None else None,
                   "chunks": chunks, "polls": self.pending_polls, "sent": 0}
            if self.fail:
                job["error"] = self.fail
            self.jobs[job_id] = job
            if path == "/run" or job["polls"] > 0:
                return Reply.json({"id": job_id, "status": "IN_QUEUE"})
            return Reply.json(self._view(job))
        if req.method == "GET" and path.startswith("/status/"):
            job = self.jobs[path.removeprefix("/status/")]
            if job["polls"] > 0:
                job["polls"] -= 1
                return Reply.json({"id": job["id"], "status": "IN_PROGRESS"})
            return Reply.json(self._view(job))
        if req.method == "GET" and path.startswith("/stream/"):
            job = self.jobs[path.removeprefix("/stream/")]
            return Reply.json(self._stream(job))
        if req.method == "POST" and path.startswith("/cancel/"):
            self.cancelled.append(path.removeprefix("/cancel/"))
            return Reply.json({"id": path.removeprefix("/cancel/"), "status": "CANCELLED"})
        return Reply(404, b"")

    def _view(self, job: dict[str, Any]) -> dict[str, Any]:
        view = {"id": job["id"], "status": job["status"], "delayTime": 5, "executionTime": 9}
        if job["status"] == "COMPLETED":
            view["output"] = job["output"]
        if "error" in job:
            view["error"] = job["error"]
        return view

    def _stream(self, job: dict[str, Any]) -> dict[str, Any]:
        chunks: list[bytes] = job["chunks"]
        if self.fail:
            return {"status": "FAILED", "stream": []}
        sent = job["sent"]
        size = self.batches[min(job.get("batch", 0), len(self.batches) - 1)]
        job["batch"] = job.get("batch", 0) + 1
        batch = chunks[sent : sent + size]
        job["sent"] = sent + len(batch)
        done = job["sent"] >= len(chunks)
        if self.raw_sse:
            text = b"".join(batch).decode()
            # Split one batch into two outputs mid-event: the client must buffer across items.
            half = len(text) // 2
            items = [{"output": text[:half]}, {"output": text[half:]}] if text else []
        else:
            items = []
            for raw in batch:
                data = raw.decode().strip().removeprefix("data:").strip()
                if data and data != "[DONE]":
                    items.append({"output": [json.loads(data)]})
        return {"status": "COMPLETED" if done and not batch else "IN_PROGRESS", "stream": items}


# --------------------------------------------------------------------------------------------------
# Vast.ai: the route server and a TGI-template worker


def raw_members(text: str) -> dict[str, str]:
    """The exact source text of each top-level member of a JSON object."""
    decoder = json.JSONDecoder()
    members: dict[str, str] = {}
    i = text.index("{") + 1
    while True:
        while text[i] in " \t\r\n,":
            i += 1
        if text[i] == "}":
            return members
        key, i = scanstring(text, i + 1)
        i = text.index(":", i) + 1
        while text[i] in " \t\r\n":
            i += 1
        _, end = decoder.raw_decode(text, i)
        members[key] = text[i:end]
        i = end


def legacy_message(auth: dict[str, Any]) -> bytes:
    """What the 2024 worker verifies: cost, endpoint, reqnum, url as `json.dumps(indent=4)`."""
    return json.dumps({k: auth[k] for k in ("cost", "endpoint", "reqnum", "url")}, indent=4).encode()


@dataclass
class FakeVast(LoopbackServer):
    """`/route/` and the worker's `/generate` + `/generate_stream` on one server. Tickets are signed
    with a fresh RSA key (PKCS#1 v1.5, SHA-256) and spelled unusually (an exponent float, an escaped
    é, spaces), so a client that re-encodes them is caught. `no_worker` route replies come first
    without a `url`. Like the legacy worker, only `inputs` and `max_new_tokens` reach the model."""

    endpoint: str = "café-tgi"
    api_key: str = "vast-key"
    no_worker: int = 0
    text: Callable[[str], str] = lambda prompt: f"echo: {prompt}"
    tickets: list[str] = field(default_factory=list)
    echoed: list[str] = field(default_factory=list)
    rejected: int = 0
    _reqnum: Any = field(default_factory=lambda: itertools.count(1_000_000_000_000))
    _key: Any = field(default_factory=lambda: RSA.generate(1024))
    _highest: int = 0

    def __post_init__(self) -> None:
        LoopbackServer.__init__(self)

    def _sign(self, auth: dict[str, Any]) -> str:
        digest = SHA256.new(legacy_message(auth))
        return base64.b64encode(pkcs1_15.new(self._key).sign(digest)).decode()

    def _verify(self, auth: dict[str, Any]) -> bool:
        try:
            digest = SHA256.new(legacy_message(auth))
            pkcs1_15.new(self._key.publickey()).verify(digest, base64.b64decode(auth["signature"]))
        except (ValueError, TypeError, KeyError):
            return False
        reqnum = auth["reqnum"]
        if reqnum < self._highest - 100:
            return False
        self._highest = max(self._highest, reqnum)
        return True

    async def answer(self, req: Seen) -> Reply:
        if req.path == "/route/":
            body = req.body if isinstance(req.body, dict) else {}
            if body.get("api_key") != self.api_key or body.get("endpoint") != self.endpoint:
                return Reply(401, b'{"error": "bad api key or endpoint"}')
            if self.no_worker > 0:
                self.no_worker -= 1
                return Reply.json({"status": "no workers ready, scaling up", "endpoint": self.endpoint})
            cost = float(body["cost"])
            auth = {"cost": cost, "endpoint": self.endpoint, "reqnum": next(self._reqnum), "url": self.url}
            signature = self._sign(auth)
            mantissa = f"{cost / 100:g}E2"  # 256.0 spelled 2.56E2
            ticket = (
                f'{{"signature": "{signature}", "cost": {mantissa}, '
                f'"endpoint": {json.dumps(self.endpoint)}, "reqnum": {auth["reqnum"]}, '
                f'"url": "{self.url}"}}'
            )
            self.tickets.append(ticket)
            return Reply(200, ticket.encode())
        if req.method != "POST" or req.path not in ("/generate", "/generate_stream"):
            return Reply(404, b"")
        text = req.raw.decode()
        try:
            members = raw_members(text)
            auth = json.loads(members["auth_data"])
            payload = json.loads(members["payload"])
        except (ValueError, KeyError):
            return Reply(422, b'{"error": "invalid JSON"}')
        self.echoed.append(members["auth_data"])
        if not self._verify(auth):
            self.rejected += 1
            return Reply(401, b"")
        parameters = payload.get("parameters") or {}
        if "max_new_tokens" not in parameters:
            return Reply.json({"payload": {"parameters": {"max_new_tokens": "missing parameter"}}}, 422)
        answer = self.text(str(payload.get("inputs", "")))
        if req.path == "/generate":
            return Reply.json([{"generated_text": answer, "details": {
                "finish_reason": "length", "generated_tokens": len(answer.split())}}])
        words = answer.split(" ")
        events = []
        for i, word in enumerate(words, start=1):
            events.append({"index": i, "token": {"id": i, "text": word if i == 1 else " " + word,
                                                 "logprob": -0.1, "special": False},
                           "generated_text": None, "details": None})
        events.append({"index": len(words) + 1, "token": {"id": 0, "text": "</s>", "logprob": 0.0,
                                                          "special": True},
                       "generated_text": answer,
                       "details": {"finish_reason": "eos_token", "generated_tokens": len(words) + 1,
                                   "seed": None, "input_length": 3}})
        return Reply(content_type="text/event-stream",
                     chunks=[b"data:" + json.dumps(e).encode() + b"\n\n" for e in events])

