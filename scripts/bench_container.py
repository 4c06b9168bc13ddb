"""Benchmark: the container's added latency and throughput, side by side with calling TGI directly.

Run `make bench-container`. It starts two fake TGI servers (0 ms and 200 ms per answer) and one container
in front of each, all as separate processes on 127.0.0.1, then measures in alternating rounds:

* added latency p50/p99 at concurrency 1 and 64 against the 0 ms backend (container minus direct);
* throughput at concurrency 256 against the 200 ms backend, as a ratio of direct.

Goals: p50 added <= 1 ms, p99 added <= 5 ms, throughput >= 0.9 x direct. Nothing is asserted; the numbers
are printed. The container runs with `--workers 2` as the image does (`--workers 1` to compare).

Why the 256 case is hard: a fixed-latency backend keeps the 256 requests in lockstep, so each wave costs
200 ms plus 256 x (CPU per request). The fake backend needs ~0.07 ms of CPU per request; hypercorn with an
empty ASGI app alone needs ~0.2 ms here, and the container ~1 ms, which a second worker halves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
JOB = {"source": 1, "destination": 1, "data": {"text": "hello there"}, "requires_proof": False}
JSON_HEADERS = {"content-type": "application/json"}
DIRECT = {"inputs": "hello there", "parameters": {"max_new_tokens": 16, "details": True}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited early")
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not start")


def start_fake(delay: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "faketgi.py"), "--port", str(port), "--delay", str(delay)],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/info", proc)
    return proc, url


def start_container(upstream: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "TGI_INF_WORKFLOW_POSITIONAL_ARGS": json.dumps([upstream, 30]),
        "TGI_INF_WORKFLOW_KW_ARGS": json.dumps({"max_new_tokens": 16}),
        "TGI_INF_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "infernet_tgi", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/", proc)
    return proc, url


async def timed_requests(
    client: aiohttp.ClientSession, url: str, body: dict[str, object], total: int, concurrency: int
) -> tuple[list[float], float]:
    """Latencies of `total` requests sent by `concurrency` workers, and the wall time they took."""
    latencies: list[float] = []
    remaining = total
    payload = json.dumps(body).encode()

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            async with client.post(url, data=payload, headers=JSON_HEADERS) as response:
                text = await response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != 200:
                raise SystemExit(f"{url}: HTTP {response.status} {text[:200]!r}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency_pair(
    client: aiohttp.ClientSession, direct: str, container: str, concurrency: int, total: int, rounds: int
) -> None:
    d_all: list[float] = []
    c_all: list[float] = []
    for _ in range(rounds):  # alternate so drift hits both sides alike
        d, _ = await timed_requests(client, direct, DIRECT, total, concurrency)
        c, _ = await timed_requests(client, container, JOB, total, concurrency)
        d_all += d
        c_all += c
    d50, d99 = pct(d_all, 0.5) * 1e3, pct(d_all, 0.99) * 1e3
    c50, c99 = pct(c_all, 0.5) * 1e3, pct(c_all, 0.99) * 1e3
    print(
        f"concurrency {concurrency:>3} (0 ms backend, {len(c_all)} requests each): "
        f"direct p50 {d50:.2f} ms p99 {d99:.2f} ms | container p50 {c50:.2f} ms p99 {c99:.2f} ms | "
        f"added p50 {c50 - d50:+.2f} ms p99 {c99 - d99:+.2f} ms"
    )


async def throughput_pair(
    client: aiohttp.ClientSession, direct: str, container: str, concurrency: int, total: int, rounds: int
) -> None:
    d_rates: list[float] = []
    c_rates: list[float] = []
    for _ in range(rounds):
        _, d_wall = await timed_requests(client, direct, DIRECT, total, concurrency)
        _, c_wall = await timed_requests(client, container, JOB, total, concurrency)
        d_rates.append(total / d_wall)
        c_rates.append(total / c_wall)
    d, c = statistics.median(d_rates), statistics.median(c_rates)
    print(
        f"concurrency {concurrency} (200 ms backend, {total} requests x {rounds} rounds): "
        f"direct {d:.0f} req/s | container {c:.0f} req/s | ratio {c / d:.3f}"
    )


async def run(args: argparse.Namespace) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    print(f"container workers: {args.workers}; load average {os.getloadavg()[0]:.2f}")
    try:
        fast, fast_url = start_fake(0.0)
        slow, slow_url = start_fake(0.2)
        procs += [fast, slow]
        c_fast, c_fast_url = start_container(fast_url, args.workers)
        c_slow, c_slow_url = start_container(slow_url, args.workers)
        procs += [c_fast, c_slow]
        # The load generator uses aiohttp: httpx's own pool would be the bottleneck at 256.
        connector = aiohttp.TCPConnector(limit=512)
        async with aiohttp.ClientSession(connector=connector) as client:
            direct_fast, direct_slow = fast_url + "/generate", slow_url + "/generate"
            job_fast, job_slow = c_fast_url + "/service_output", c_slow_url + "/service_output"
            await timed_requests(client, direct_fast, DIRECT, 200, 8)  # warm up connections
            await timed_requests(client, job_fast, JOB, 200, 8)
            await latency_pair(client, direct_fast, job_fast, 1, args.requests // 4, args.rounds)
            await latency_pair(client, direct_fast, job_fast, 64, args.requests, args.rounds)
            await timed_requests(client, job_slow, JOB, 256, 256)
            await throughput_pair(client, direct_slow, job_slow, 256, args.requests * 2, args.rounds)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per measurement")
    parser.add_argument(
        "--workers", type=int, default=2, help="container worker processes (2: the image default)"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
