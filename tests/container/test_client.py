"""HTTPClient on the wire: keep-alive reuse, body framings, stale connections, the connection limit,
streams giving their connection back, URL credentials, odd stream events relayed; against raw HTTP
servers on loopback that count their connections."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from infernet_tgi.drain import Drain
from infernet_tgi.errors import UpstreamUnavailableError
from infernet_tgi.relay import Relay
from infernet_tgi.upstream.client import HTTPClient
from infernet_tgi.upstream.tgi import tgi_stream

Handler = Callable[[bytes, asyncio.StreamWriter, int], Awaitable[bool]]  # False: close the connection


class RawServer:
    """Reads requests (head and Content-Length body) and lets `handler` write the answer bytes."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.heads: list[bytes] = []
        self.url = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        index = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                self.heads.append(head)
                if not await self.handler(head, writer, index):
                    return
                index += 1
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def raw_server(handler: Handler, host: str = "127.0.0.1") -> AsyncIterator[RawServer]:
    server = RawServer(handler)
    listener = await asyncio.start_server(server.serve, host, 0)
    shown = f"[{host}]" if ":" in host else host
    server.url = f"http://{shown}:{listener.sockets[0].getsockname()[1]}"
    try:
        yield server
    finally:
        listener.close()


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def answer(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + b"".join(extra)
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


async def test_keep_alive_reuses_one_connection_for_sized_and_chunked_bodies() -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter, index: int) -> bool:
        if index % 2:
            writer.write(CHUNKED_HEAD + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        else:
            writer.write(answer(b'{"n": %d}' % index, b"X-Prompt-Tokens: 7\r\n"))
        return True

    async with raw_server(handler) as server, HTTPClient(timeout=5) as client:
        for index in range(6):
            reply = await client.post(server.url + "/generate", json={"inputs": "q"})
            assert reply.status == 200
            if index % 2:
                assert reply.body == b"hello world"
            else:
                assert reply.json() == {"n": index} and reply.headers["x-prompt-tokens"] == "7"
        assert server.connections == 1
        head = server.heads[0]
        assert b"POST /generate HTTP/1.1" in head and b"Content-Type: application/json" in head


async def test_a_body_ended_by_close_is_read_whole_and_its_connection_not_reused() -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + b"x" * 100_000)
        await writer.drain()
        return False

    async with raw_server(handler) as server, HTTPClient(timeout=5) as client:
        for _ in range(2):
            reply = await client.get(server.url + "/info")
            assert reply.body == b"x" * 100_000
        assert server.connections == 2


async def test_a_body_larger_than_the_read_buffer_is_read_whole() -> None:
    big = bytes(range(256)) * (12 << 10)  # 3 MiB: reading pauses at 1 MiB buffered until taken

    async def handler(head: bytes, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(answer(big))
        await writer.drain()
        return True

    async with raw_server(handler) as server, HTTPClient(timeout=2) as client:
        assert (await client.get(server.url + "/big")).body == big
        assert (await client.get(server.url + "/big")).body == big
        assert server.connections == 1


async def test_a_connection_that_sent_more_than_the_answer_is_not_reused() -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(answer(b'{"n": 1}') + answer(b'{"n": 2}'))  # one request, two answers
        return True

    async with raw_server(handler) as server, HTTPClient(timeout=5) as client:
        assert (await client.get(server.url + "/a")).json() == {"n": 1}
        assert (await client.get(server.url + "/b")).json() == {"n": 1}  # not the stray second one
        assert server.connections == 2


async def test_an_idle_connection_the_upstream_closed_is_replaced_once_not_forever() -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter, index: int) -> bool:
        if index == 1:
            return False  # a reused connection read the request, then closed without answering
        writer.write(answer(b"{}"))
        return True

    async with raw_server(handler) as server, HTTPClient(timeout=5) as client:
        await client.get(server.url + "/a")
        assert (await client.get(server.url + "/b")).status == 200  # sent again on a new connection
        assert server.connections == 2

    async def mute(head: bytes, writer: asyncio.StreamWriter, index: int) -> bool:
        return False  # a fresh connection that never answers: a real failure

    async with raw_server(mute) as server, HTTPClient(timeout=5) as client:
        with pytest.raises(UpstreamUnavailableError, match="closed the connection"):
            await client.get(server.url + "/a")
        assert server.connections == 1


async def test_no_more_connections_than_the_limit() -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter, index: int) -> bool:
        await asyncio.sleep(0.05)
        writer.write(answer(b"{}"))
        return True

    async with raw_server(handler) as server, HTTPClient(timeout=5, max_connections=2) as client:
        replies = await asyncio.gather(*(client.get(server.url + f"/{i}") for i in range(8)))
        assert [r.status for r in replies] == [200] * 8
        assert server.most_open == 2 and server.connections == 2


async def test_a_stream_that_ends_normally_gives_its_connection_back() -> None:
    events = [{"token": {"text": f"t{i} ", "special": False}} for i in range(3)]
    final = {"token": {"text": "</s>", "special": True}, "generated_text": "t0 t1 t2 ",
             "details": {"finish_reason": "length", "generated_tokens": 4, "input_length": 1}}

    async def handler(head: bytes, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(CHUNKED_HEAD)
        for event in [*events, final]:
            data = b"data:" + json.dumps(event).encode() + b"\n\n"
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        return True

    async with raw_server(handler) as server, HTTPClient(timeout=5) as client:
        for _ in range(3):
            stream = tgi_stream(client, server.url + "/generate_stream", json={"inputs": "q"})
            deltas = [d async for d in stream]
            assert "".join(d.text for d in deltas) == "t0 t1 t2 " and deltas[-1].finish_reason == "length"
        assert server.connections == 1


async def test_a_refused_address_falls_back_to_the_hosts_next_one(monkeypatch: pytest.MonkeyPatch) -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(answer(b"{}"))
        return True

    with socket.socket() as closed:  # bound, never listening: connecting to it is refused
        closed.bind(("127.0.0.1", 0))
        refused = closed.getsockname()[1]
        async with raw_server(handler) as server, HTTPClient(timeout=5) as client:
            live = int(server.url.rsplit(":", 1)[1])
            resolved = [(socket.AF_INET, ("127.0.0.1", refused)), (socket.AF_INET, ("127.0.0.1", live))]

            async def addresses(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
                return resolved  # a name with two addresses, the first one down

            monkeypatch.setattr(client, "_addresses", addresses)
            assert (await client.get("http://upstream.test/info")).status == 200
            assert server.connections == 1
            assert b"Host: upstream.test\r\n" in server.heads[0]

            resolved = resolved[:1]  # every address refuses (another port: no idle connection to reuse)
            with pytest.raises(UpstreamUnavailableError, match="unreachable at http://upstream.test:1/"):
                await client.get("http://upstream.test:1/info")


async def test_url_credentials_become_basic_authorization() -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(answer(b"{}"))
        return True

    async with raw_server(handler) as server, HTTPClient(timeout=5) as client:
        url = server.url.replace("http://", "http://user:p%40ss@") + "/x?y=1"
        await client.get(url)
        expected = base64.b64encode(b"user:p@ss")
        assert b"Authorization: Basic " + expected in server.heads[0]
        assert server.heads[0].startswith(b"GET /x?y=1 HTTP/1.1\r\n")


async def test_an_ipv6_upstream_gets_its_bracketed_host_header() -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(answer(b"{}"))
        return True

    async with raw_server(handler, "::1") as server, HTTPClient(timeout=5) as client:
        assert (await client.get(server.url + "/info")).status == 200
        port = server.url.rsplit(":", 1)[1]
        assert f"Host: [::1]:{port}\r\n".encode() in server.heads[0]


def test_header_values_cannot_smuggle_lines() -> None:
    with pytest.raises(ValueError, match="line break"):
        HTTPClient(headers={"X-A": "1\r\nX-B: 2"})


ODD_TEXTS = ['say "hi"\\n', "\\\\ back", "é", "日本", "😀", "\t\n", "\ud800", "\udc00", "</s>", "[DONE]",
             "data: x\n\n"]


def _event(text: str, *, special: bool = False, ensure_ascii: bool = True) -> bytes:
    payload = {"index": 1, "token": {"id": 1, "text": text, "logprob": -0.1, "special": special},
               "generated_text": None, "details": None}
    return b"data:" + json.dumps(payload, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


async def _relayed(server_url: str) -> bytes:
    """The body a stream job's client gets for the upstream stream at `server_url` (through
    `Relay.write_to`, as the hot path sends it)."""
    async with HTTPClient(timeout=5) as client:
        stream = tgi_stream(client, server_url + "/generate_stream", json={"inputs": "q"})
        first = await anext(stream)
        body: list[bytes] = []

        async def send(message: Any) -> None:
            body.append(message["body"])

        deadline = asyncio.get_running_loop().time() + 10
        await Relay(first, stream, deadline, Drain(5), on_close=lambda: None).write_to(send)
        return b"".join(body)


async def test_odd_token_texts_reach_the_client_exactly_however_the_events_arrive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Each event alone, several in one write, one cut in two writes (two reads here), the spaced
    # `data: ` form, raw UTF-8 next to \u escapes; a lone surrogate (escaped or as raw bytes) can only
    # become U+FFFD.
    events = [_event(text, ensure_ascii=i % 2 == 0) for i, text in enumerate(ODD_TEXTS)]
    events.append(b"data: " + _event(" spaced")[5:])
    final = {"token": {"text": "</s>", "special": True}, "generated_text": "x",
             "details": {"finish_reason": "eos_token", "generated_tokens": 12, "input_length": 1}}
    events.append(b"data:" + json.dumps(final).encode())
    frames = [event + b"\n\n" for event in events]

    async def handler(head: bytes, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(CHUNKED_HEAD)
        writes = [frames[0], frames[1] + frames[2] + frames[3], frames[4][:9], frames[4][9:]]
        writes += [b"".join(frames[5:8]), *frames[8:]]
        for data in writes:
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            await asyncio.sleep(0.02)  # separate reads on the other side
        writer.write(b"0\r\n\r\n")
        return True

    async with raw_server(handler) as server:
        body = await _relayed(server.url)
    expected = "".join(ODD_TEXTS).replace("\ud800", "\ufffd").replace("\udc00", "\ufffd") + " spaced"
    assert body.decode("utf-8") == expected
    assert "ended" not in caplog.text


async def test_an_error_event_mid_stream_ends_the_body_after_the_tokens_before_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = b'data:{"error":"Request failed during generation: out of memory","error_type":"generation"}'
    frames = [_event("a") + b"\n\n", _event("b") + b"\n\n" + error + b"\n\n" + _event("never") + b"\n\n"]

    async def handler(head: bytes, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(CHUNKED_HEAD)
        for data in frames:
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        return True

    async with raw_server(handler) as server:
        body = await _relayed(server.url)
    assert body == b"ab"
    assert "stream ended early" in caplog.text and "out of memory" in caplog.text
