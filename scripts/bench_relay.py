"""Benchmark: the stream relay's own CPU per chunk, in one process, without sockets or a server.

Run `.venv/bin/python scripts/bench_relay.py [--events-per-read N]`. The upstream's HTTP bytes (a TGI
`generate_stream` answer, chunked, one token event per HTTP chunk) are fed to a real upstream
`Connection` as its socket would hand them over (N events per read), and read by the real `tgi_stream`
and `Relay.write_to`, whose ASGI `send` only counts the messages. What is left out is what the server
and the kernel add (the socket reads and writes, uvicorn's `send`, the event loop's polling), so this is
the part of a relayed token that the relay's code decides. Prints the CPU time per token: the best and
the median of `--rounds` rounds of `--tokens` tokens, minus a loop that only yields as the feed does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from infernet_tgi.drain import Drain
from infernet_tgi.relay import Relay
from infernet_tgi.upstream.client import Body
from infernet_tgi.upstream.connection import Connection
from infernet_tgi.upstream.tgi import tgi_stream

URL = "http://upstream.invalid/generate_stream"
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(payload: dict[str, Any]) -> bytes:
    event = b"data:" + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def _token(index: int) -> bytes:
    token = {"id": index, "text": f" w{index}", "logprob": -0.1, "special": False}
    return _chunk({"index": index, "token": token, "generated_text": None, "details": None})


class _Transport:
    """What the connection needs of a socket transport: nothing is sent anywhere."""

    def write(self, data: bytes) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Client:
    """The part of `HTTPClient` that `tgi_stream` uses, over one prepared connection."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    @asynccontextmanager
    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Body]:
        body = Body(self._connection, URL, self)  # type: ignore[arg-type]
        try:
            yield body
        finally:
            body.close()

    def _release(self, connection: Connection) -> None:
        pass


async def one_round(tokens: int, per_read: int) -> float:
    """CPU seconds per token of relaying `tokens` token events that arrive `per_read` at a time."""
    loop = asyncio.get_running_loop()
    connection = Connection(loop, ("http", "upstream.invalid", 80), 30.0)
    connection.connection_made(_Transport())  # type: ignore[arg-type]
    connection.send(b"")
    connection.data_received(HEAD)
    chunks = [_token(i) for i in range(tokens)]
    details = {"finish_reason": "length", "generated_tokens": tokens, "input_length": 3}
    final = {"token": {"id": 0, "text": "", "special": True}, "generated_text": "", "details": details}
    chunks.append(_chunk(final) + b"0\r\n\r\n")
    sent = 0

    async def send(message: Any) -> None:
        nonlocal sent
        sent += 1

    stream = tgi_stream(_Client(connection), URL)  # type: ignore[arg-type]
    connection.data_received(chunks[0])
    relay = Relay(await anext(stream), stream, loop.time() + 600, Drain(5), on_close=lambda: None)
    task = asyncio.create_task(relay.write_to(send))
    await asyncio.sleep(0)
    started = time.process_time()
    for i in range(1, len(chunks), per_read):
        connection.data_received(b"".join(chunks[i : i + per_read]))
        await asyncio.sleep(0)  # the relay's task runs
    await task
    spent = time.process_time() - started
    started = time.process_time()
    for _ in range(1, len(chunks), per_read):
        await asyncio.sleep(0)
    feeding = time.process_time() - started
    return (spent - feeding) / tokens


async def main(args: argparse.Namespace) -> None:
    results = [await one_round(args.tokens, args.events_per_read) for _ in range(args.rounds)]
    print(
        f"relay CPU per token, {args.events_per_read} event(s) a read: best {min(results) * 1e6:.2f} us, "
        f"median {statistics.median(results) * 1e6:.2f} us ({args.rounds} rounds of {args.tokens})"
    )


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-per-read", type=int, default=1, help="token events in one socket read")
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    try:
        import uvloop  # the container's loop when installed
    except ImportError:
        asyncio.run(main(args))
    else:
        uvloop.run(main(args))


if __name__ == "__main__":
    run()
