"""HTTPClient and SSEDecoder: the bytes between the container and its upstream.

Every client failure comes out as a retryable error of our tree; requests carry the configured headers
and cookies; a stream left early really closes its connection; SSE framing is parsed the same however
the bytes are split into chunks."""

from __future__ import annotations

import asyncio
import json
import random
import ssl

import httptools
import pytest

from faketgi import FakeTGI, Ok, Reset, Stall
from infernet_tgi.errors import UpstreamProtocolError, UpstreamTimeoutError, UpstreamUnavailableError
from infernet_tgi.upstream.client import HTTPClient
from infernet_tgi.upstream.http import ConnectionClosedError, ConnectTimeoutError, transport_error
from infernet_tgi.upstream.sse import SSEDecoder

CLIENT_FAILURES: list[BaseException] = [
    ConnectTimeoutError("connect timed out"),
    ConnectionClosedError("the upstream closed the connection"),
    httptools.HttpParserInvalidStatusError("invalid status"),
    httptools.HttpParserError("bad chunk"),
    ConnectionRefusedError(111, "Connection refused"),
    OSError(113, "No route to host"),
    ssl.SSLCertVerificationError("certificate verify failed"),
    TimeoutError(),
    ValueError("not an http(s) URL"),
]


@pytest.mark.parametrize("exc", CLIENT_FAILURES, ids=lambda e: type(e).__name__)
def test_every_client_failure_is_a_retryable_upstream_error(exc: BaseException) -> None:
    error = transport_error(exc, "http://user:pw@tgi:8080/generate")
    assert error.retryable and error.status in (503, 504)
    assert "pw" not in str(error) and "http://tgi:8080/generate" in str(error)


def test_specific_mappings() -> None:
    url = "http://h/x"
    assert type(transport_error(TimeoutError(), url)) is UpstreamTimeoutError
    connect = transport_error(ConnectTimeoutError("connect timed out"), url)
    assert type(connect) is UpstreamUnavailableError and "connect timed out" in str(connect)
    closed = transport_error(ConnectionClosedError("gone"), url)
    assert type(closed) is UpstreamUnavailableError and "closed the connection" in str(closed)
    refused = transport_error(ConnectionRefusedError(111, "Connection refused"), url)
    assert type(refused) is UpstreamUnavailableError and "unreachable" in str(refused)


async def test_requests_headers_cookies_and_json() -> None:
    with FakeTGI() as fake:
        async with HTTPClient(headers={"X-A": "1"}, cookies={"c": "v"}, timeout=5) as client:
            reply = await client.post(fake.url + "/generate", json={"inputs": "q"})
            assert reply.status == 200 and reply.json()["generated_text"] == "echo: q"
            assert reply.headers["X-Prompt-Tokens"] == "1"  # case-insensitive, as HTTP says
            seen = fake.requests[-1]
            assert seen.headers["x-a"] == "1" and seen.headers["cookie"] == "c=v"
            assert seen.headers["content-type"] == "application/json" and seen.body == {"inputs": "q"}
            raw = await client.post(fake.url + "/generate", content=b'{"inputs": "r"}',
                                    headers={"content-type": "application/json"})
            assert raw.json()["generated_text"] == "echo: r"
            assert (await client.get(fake.url + "/info")).json()["model_id"] == "fake/tgi-model"


async def test_failures_raise_our_errors() -> None:
    with FakeTGI() as fake:
        async with HTTPClient(timeout=0.3) as client:
            fake.script(Reset())
            with pytest.raises(UpstreamUnavailableError):
                await client.post(fake.url + "/generate", json={"inputs": "q"})
            fake.script(Stall(3))
            with pytest.raises(UpstreamTimeoutError):
                await client.post(fake.url + "/generate", json={"inputs": "q"})
            with pytest.raises(UpstreamUnavailableError, match="upstream unreachable at http://127.0.0.1:9/"):
                await client.get("http://127.0.0.1:9/")


async def test_stream_chunks_and_early_close() -> None:
    with FakeTGI() as fake:
        async with HTTPClient(timeout=5) as client:
            fake.script(Ok(text=" ".join(["w"] * 100), token_delay=0.02))
            async with client.stream("POST", fake.url + "/generate_stream", json={"inputs": "q"}) as body:
                assert body.status == 200
                async for chunk in body.chunks():
                    assert chunk.startswith(b"data:")
                    break
            for _ in range(100):
                if fake.disconnects:
                    break
                await asyncio.sleep(0.05)
            assert fake.disconnects == 1


def tgi_stream_bytes(newline: bytes) -> tuple[bytes, list[bytes]]:
    events = [json.dumps({"token": {"text": f"t{i}"}}).encode() for i in range(5)]
    raw = b": keep-alive" + newline + newline
    for event in events:
        raw += b"id: 1" + newline + b"data:" + event + newline + newline
    raw += b"event: x" + newline + b"data: line one" + newline + b"data: line two" + newline + newline
    raw += b"data: [DONE]" + newline + newline + b"data: after done" + newline + newline
    return raw, [*events, b"line one\nline two"]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_sse_is_the_same_however_the_bytes_are_split(newline: bytes) -> None:
    raw, expected = tgi_stream_bytes(newline)
    rng = random.Random(7)
    splits = [[raw], [raw[i : i + 1] for i in range(len(raw))]]
    splits += [_random_split(raw, rng) for _ in range(50)]
    for chunks in splits:
        decoder = SSEDecoder()
        got = [payload for chunk in chunks for payload in decoder.feed(chunk)] + decoder.close()
        assert got == expected and decoder.done


def test_sse_events_that_arrive_together_are_read_as_one_by_one() -> None:
    # Whole one-line events in one chunk take a shortcut; anything else in the chunk must not.
    events = [b'data:{"t": 1}\n\n', b'data: {"t": 2}\n\n', b"data:\n\n", b": ping\n\n",
              b"data:a\ndata:b\n\n", b"\n", b"id: 3\n\n", b"data:[DONE]\n\n", b"data:after\n\n"]
    rng = random.Random(11)
    for _ in range(300):
        picked = rng.choices(events, k=rng.randint(1, 8))
        expected = _one_byte_at_a_time(b"".join(picked))
        decoder = SSEDecoder()
        got = [payload for chunk in _random_groups(picked, rng) for payload in decoder.feed(chunk)]
        assert (got + decoder.close(), decoder.done) == expected


def test_sse_shortcut_keeps_the_limits_and_later_events() -> None:
    with pytest.raises(UpstreamProtocolError, match="over 8 bytes"):
        SSEDecoder(max_event=8).feed(b"data:1\n\ndata:" + b"x" * 9 + b"\n\n")
    decoder = SSEDecoder()
    assert decoder.feed(b"data:1\n\ndata:2") == [b"1"]  # a split event: the rest comes later
    assert decoder.feed(b"3\n\ndata:4\n\n") == [b"23", b"4"]


def _one_byte_at_a_time(raw: bytes) -> tuple[list[bytes], bool]:
    decoder = SSEDecoder()
    got = [payload for i in range(len(raw)) for payload in decoder.feed(raw[i : i + 1])]
    return got + decoder.close(), decoder.done


def _random_groups(parts: list[bytes], rng: random.Random) -> list[bytes]:
    """`parts` joined into a few chunks at their own boundaries."""
    out, current = [], b""
    for part in parts:
        current += part
        if rng.random() < 0.4:
            out.append(current)
            current = b""
    return [*out, current] if current else out


def _random_split(raw: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(raw)), 6))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


def test_sse_unterminated_last_event_and_limits() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data:{"a": 1}\n\ndata:{"b"') == [b'{"a": 1}']
    assert decoder.close() == [b'{"b"']
    with pytest.raises(UpstreamProtocolError, match="over 64 bytes"):
        SSEDecoder(max_event=64).feed(b"data:" + b"x" * 100)
    with pytest.raises(UpstreamProtocolError, match="over 64 bytes"):
        big = SSEDecoder(max_event=64)
        for _ in range(10):
            big.feed(b"data:" + b"x" * 10 + b"\n")
