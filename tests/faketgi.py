"""A scriptable TGI-protocol server on loopback, for fault tests and benchmarks.

Use `FakeTGI()` as a context manager: it serves on 127.0.0.1 from its own thread and event loop, so it
works the same under any test loop and in a benchmark script. Queue behaviours with `script(...)`; each
request takes the next one, and an empty queue means `Ok`. It speaks just enough HTTP/1.1 (keep-alive,
Content-Length bodies; streams chunked and kept alive as TGI's, error streams ended by a close) to
control the socket exactly: answer, stall, stream slowly, or reset.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Ok:
    """A normal answer: `text` (default: "echo: <inputs>") as JSON or as SSE tokens."""

    text: str | None = None
    finish_reason: str = "length"
    delay: float = 0.0
    token_delay: float = 0.0
    special_eos: bool = True
    delay_max: float | None = None  # when set, each delay is drawn uniformly from [delay, delay_max]


@dataclass(frozen=True)
class Status:
    """A non-200 answer with a TGI error body (or `raw` bytes as the body)."""

    status: int
    message: str = "error"
    error_type: str | None = None
    raw: bytes | None = None
    content_type: str = "application/json"


@dataclass(frozen=True)
class Reset:
    """Read the request, then close the socket with RST (no answer at all)."""


@dataclass(frozen=True)
class Stall:
    """Read the request, then say nothing for `seconds`."""

    seconds: float = 3600.0


@dataclass(frozen=True)
class StreamError:
    """HTTP 200 SSE: `tokens` normal tokens, then an in-stream error event."""

    tokens: int = 0
    message: str = "Input validation error: `temperature` must be strictly positive"
    error_type: str = "validation"


Behaviour = Ok | Status | Reset | Stall | StreamError


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeTGI:
    """The server. `requests` lists what it received; `disconnects` counts streams cut by the client."""

    model_id: str = "fake/tgi-model"
    default: Behaviour = field(default_factory=Ok)
    # /chat_tokenize and /tokenize: absent (404, as TGI before 2.2) unless `chat_tokenize`; `bos` is
    # a token the tokenizer adds in front of every text, which the template also writes.
    chat_tokenize: bool = False
    bos: str = ""
    requests: list[Seen] = field(default_factory=list)
    disconnects: int = 0
    port: int = 0
    _queue: deque[Behaviour] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._queue.extend(behaviours)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.disconnects = 0

    def _next(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default

    def __enter__(self) -> FakeTGI:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            self._server.close()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="faketgi", daemon=True)
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
                request = await _read_request(reader)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                if not await self._answer(request, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _answer(self, req: Seen, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must not be reused."""
        if req.method == "GET":
            if req.path == "/info":
                return await _send_json(writer, 200, {"model_id": self.model_id, "version": "3.3.6"})
            if req.path == "/health":
                return await _send(writer, 200, b"", "application/json")
            return await _send(writer, 404, b"", "text/plain")
        if req.path in ("/chat_tokenize", "/tokenize"):
            return await self._tokenize(req, writer)
        behaviour = self._next()
        streaming = req.path.endswith("generate_stream") or (
            isinstance(req.body, dict) and req.body.get("stream") is True
        )
        if isinstance(behaviour, Reset):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if isinstance(behaviour, Stall):
            await asyncio.sleep(behaviour.seconds)
            return False
        if isinstance(behaviour, Status):
            body = behaviour.raw
            if body is None:
                payload: dict[str, Any] = {"error": behaviour.message}
                if behaviour.error_type is not None:
                    payload["error_type"] = behaviour.error_type
                body = json.dumps(payload).encode()
            return await _send(writer, behaviour.status, body, behaviour.content_type)
        inputs = req.body.get("inputs", "") if isinstance(req.body, dict) else ""
        if isinstance(behaviour, StreamError):
            await _sse_head(writer)
            for i in range(behaviour.tokens):
                await _sse(writer, _token_event(i + 1, f"t{i}", special=False))
            await _sse(writer, {"error": behaviour.message, "error_type": behaviour.error_type})
            return False
        text = behaviour.text if behaviour.text is not None else f"echo: {inputs}"
        if behaviour.delay_max is not None:
            await asyncio.sleep(random.uniform(behaviour.delay, behaviour.delay_max))
        elif behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if not streaming:
            tokens = text.split(" ")
            return await _send_json(
                writer,
                200,
                {
                    "generated_text": text,
                    "details": {
                        "finish_reason": behaviour.finish_reason,
                        "generated_tokens": len(tokens),
                        "seed": None,
                        "prefill": [],
                        "tokens": [],
                    },
                },
                {"x-prompt-tokens": str(len(str(inputs).split()))},
            )
        # Chunked and kept alive, as TGI answers: the connection serves the next request.
        await _sse_head(writer, chunked=True)
        pieces = [p for p in _split_keep_spaces(text)]
        try:
            for i, piece in enumerate(pieces, start=1):
                if behaviour.token_delay:
                    await asyncio.sleep(behaviour.token_delay)
                await _sse(writer, _token_event(i, piece, special=False), chunked=True)
            last = len(pieces) + 1
            final = _token_event(last, "</s>" if behaviour.special_eos else "", special=True)
            final["generated_text"] = text
            final["details"] = {
                "finish_reason": behaviour.finish_reason,
                "generated_tokens": last,
                "seed": None,
                "input_length": len(str(inputs).split()),
            }
            await _sse(writer, final, chunked=True)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            with self._lock:
                self.disconnects += 1
            return False
        return True


    async def _tokenize(self, req: Seen, writer: asyncio.StreamWriter) -> bool:
        if not self.chat_tokenize:
            return await _send(writer, 404, b"", "text/plain")
        body = req.body if isinstance(req.body, dict) else {}
        bos = [{"id": 1, "text": self.bos, "start": 0, "stop": len(self.bos)}] if self.bos else []
        if req.path == "/tokenize":
            inputs = str(body.get("inputs", ""))
            added = [{**t, "text": "", "stop": 0} for t in bos]  # TGI shows added tokens with no span
            text_token = {"id": 2, "text": inputs, "start": 0, "stop": len(inputs)}
            return await _send_json(writer, 200, [*added, text_token])
        turns = "".join(f"<|{m['role']}|>{m['content']}\n" for m in body.get("messages", []))
        text = f"{self.bos}{turns}<|assistant|>\n"
        rest = {"id": 2, "text": text[len(self.bos) :], "start": len(self.bos), "stop": len(text)}
        return await _send_json(writer, 200, {"tokenize_response": [*bos, rest], "templated_text": text})


def _split_keep_spaces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _token_event(index: int, text: str, *, special: bool) -> dict[str, Any]:
    return {
        "index": index,
        "token": {"id": index, "text": text, "logprob": -0.1, "special": special},
        "generated_text": None,
        "details": None,
    }


async def _read_request(reader: asyncio.StreamReader) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
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
        body = raw
    return Seen(method, path, headers, body)


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    content_type: str,
    extra: dict[str, str] | None = None,
) -> bool:
    head = [f"HTTP/1.1 {status} X", f"content-type: {content_type}", f"content-length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()
    return True


async def _send_json(
    writer: asyncio.StreamWriter, status: int, payload: Any, extra: dict[str, str] | None = None
) -> bool:
    return await _send(writer, status, json.dumps(payload).encode(), "application/json", extra)


async def _sse_head(writer: asyncio.StreamWriter, *, chunked: bool = False) -> None:
    """A stream's head: chunked (kept alive), or ended by closing the connection."""
    framing = b"transfer-encoding: chunked\r\n" if chunked else b"connection: close\r\n"
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        + framing
        + b"\r\n"
    )
    await writer.drain()


async def _sse(writer: asyncio.StreamWriter, payload: dict[str, Any], *, chunked: bool = False) -> None:
    event = b"data:" + json.dumps(payload).encode() + b"\n\n"
    writer.write(b"%x\r\n%s\r\n" % (len(event), event) if chunked else event)
    await writer.drain()


def main() -> None:
    """Serve from the command line (benchmarks): `python tests/faketgi.py --port N --delay 0.2`."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Fake TGI with a fixed latency, on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--delay-max", type=float, help="draw each delay uniformly from [delay, this]")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds before each stream token")
    parser.add_argument("--text", default="fixed answer text")
    args = parser.parse_args()
    default = Ok(text=args.text, delay=args.delay, delay_max=args.delay_max, token_delay=args.token_delay)
    with FakeTGI(default=default, port=args.port) as server:
        print(f"faketgi ready on {server.url}", flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
