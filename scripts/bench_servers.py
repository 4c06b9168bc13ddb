"""Benchmark: the same Quart app under hypercorn, granian and uvicorn (httptools + uvloop), side by side.

Run `flock /tmp/bench.lock .venv/bin/python scripts/bench_servers.py`. It starts fake TGI servers
(0 ms answers, 200 ms answers, and 32-token streams at 5 ms a token) and, for each server in turn, the
container's app (`infernet_tgi.app:create_app_from_env`) in front of them, all as separate processes
on 127.0.0.1. "uvicorn" is the container's own launcher (`python -m infernet_tgi`: uvicorn's `Server`
with httptools and uvloop on one SO_REUSEPORT socket per worker, and the worker's garbage-collector
settings); hypercorn and granian run the same app through their own command lines with uvloop and the
same backlog (and Python's default collector). Per server it prints:

* CPU per job: the server's CPU time (every process of it) over jobs, concurrency 64, 0 ms backend;
* added latency p50 at concurrency 1 (container minus calling the fake directly);
* streams per second at concurrency 128 as a ratio of direct, and time to first byte p50;
* throughput at concurrency 1,024 against the 200 ms backend as a ratio of direct, with the kernel's
  listen-queue drops (ListenDrops, counted machine-wide) during that run;
* with `--workers 2`: the busier worker's share of the CPU (0.50 is an even spread).

The box load average is printed first and last; numbers from a busy box are indicative only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bench_container import container_env, free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
APP = "infernet_tgi.app:create_app_from_env"
JOB = {"source": 1, "destination": 1, "data": {"text": "hello there"}, "requires_proof": False}
STREAM_JOB = {"source": 1, "destination": 2, "data": {"text": "hello there"}}
DIRECT = {"inputs": "hello there", "parameters": {"max_new_tokens": 16, "details": True}}
DIRECT_STREAM = {"inputs": "hello there", "parameters": {"max_new_tokens": 32, "details": True}}
STREAM_TEXT = " ".join(["tok"] * 32)
TICK = os.sysconf("SC_CLK_TCK")
SERVERS = ("hypercorn", "granian", "uvicorn")


def start_fake(delay: float, token_delay: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--fake", str(port), str(delay), str(token_delay)],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/info", proc)
    return proc, url


def serve_fake(port: int, delay: float, token_delay: float) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from faketgi import FakeTGI, Ok

    with FakeTGI(
        default=Ok(
            text=STREAM_TEXT if token_delay else "fixed answer text", delay=delay, token_delay=token_delay
        ),
        port=port,
    ):
        while True:
            time.sleep(3600)


def start_server(kind: str, upstream: str, workers: int, backlog: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**container_env(upstream), "PYTHONPATH": str(ROOT / "src")}
    bindir = Path(sys.executable).parent
    commands = {
        "uvicorn": [
            sys.executable,
            "-m",
            "infernet_tgi",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--backlog",
            str(backlog),
        ],
        "hypercorn": [
            sys.executable,
            "-m",
            "hypercorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--worker-class",
            "uvloop",
            "--backlog",
            str(backlog),
            f"{APP}()",
        ],
        "granian": [
            str(bindir / "granian"),
            "--interface",
            "asgi",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--loop",
            "uvloop",
            "--backlog",
            str(backlog),
            "--log-level",
            "warning",
            APP,
        ],
    }
    proc = subprocess.Popen(commands[kind], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/", proc)
    return proc, url


def tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def listen_drops() -> int:
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split()[1:], values.split()[1:], strict=False))["ListenDrops"])
    return 0


async def timed(
    client: aiohttp.ClientSession, url: str, body: dict[str, object], total: int, concurrency: int
) -> tuple[list[float], list[float], float]:
    """Latencies and times to first byte of `total` requests from `concurrency` senders, and the wall time."""
    latencies: list[float] = []
    firsts: list[float] = []
    remaining = total
    payload = json.dumps(body).encode()

    async def sender() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            async with client.post(
                url, data=payload, headers={"content-type": "application/json"}
            ) as response:
                first = True
                async for _ in response.content.iter_any():
                    if first:
                        firsts.append(time.perf_counter() - started)
                        first = False
            latencies.append(time.perf_counter() - started)
            if response.status != 200:
                raise SystemExit(f"{url}: HTTP {response.status}")

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return latencies, firsts, time.perf_counter() - started


def p50(values: list[float]) -> float:
    return statistics.median(values)


async def measure(kind: str, fakes: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
    procs = {name: start_server(kind, url, args.workers, args.backlog) for name, url in fakes.items()}
    result: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
            fast, slow, stream = (procs[n][1] + "/service_output" for n in ("fast", "slow", "stream"))
            await timed(client, fast, JOB, 300, 8)  # warm up
            # CPU per job
            pids = tree(procs["fast"][0].pid)
            before = cpu_seconds(pids)
            await timed(client, fast, JOB, args.requests, 64)
            after = cpu_seconds(pids)
            used = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
            result["cpu_ms"] = sum(used.values()) / args.requests * 1e3
            busy = sorted(used.values())
            if args.workers > 1 and len(busy) > 1:
                result["busiest_share"] = busy[-1] / sum(busy[-args.workers :])
            # added latency at concurrency 1
            direct, _, _ = await timed(client, fakes["fast"] + "/generate", DIRECT, args.requests // 4, 1)
            ours, _, _ = await timed(client, fast, JOB, args.requests // 4, 1)
            result["added_p50_ms"] = (p50(ours) - p50(direct)) * 1e3
            # streams at 128
            d_lat, d_first, d_wall = await timed(
                client, fakes["stream"] + "/generate_stream", DIRECT_STREAM, 512, 128
            )
            c_lat, c_first, c_wall = await timed(client, stream, STREAM_JOB, 512, 128)
            result["streams_ratio"] = (512 / c_wall) / (512 / d_wall)
            result["ttfb_added_ms"] = (p50(c_first) - p50(d_first)) * 1e3
            # throughput at 1,024 against 200 ms
            await timed(client, slow, JOB, 1024, 1024)  # open the connections once
            _, _, d_wall = await timed(client, fakes["slow"] + "/generate", DIRECT, 4096, 1024)
            drops = listen_drops()
            _, _, c_wall = await timed(client, slow, JOB, 4096, 1024)
            result["drops"] = listen_drops() - drops
            result["c1024_ratio"] = d_wall / c_wall
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return result


async def run(args: argparse.Namespace) -> None:
    print(
        f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; workers {args.workers}; "
        f"backlog {args.backlog}; {args.rounds} round(s), median shown"
    )
    fake_procs = []
    try:
        fakes = {}
        for name, delay, token_delay in (("fast", 0.0, 0.0), ("slow", 0.2, 0.0), ("stream", 0.0, 0.005)):
            proc, url = start_fake(delay, token_delay)
            fake_procs.append(proc)
            fakes[name] = url
        rows: dict[str, list[dict[str, float]]] = {kind: [] for kind in args.servers}
        for _ in range(args.rounds):
            for kind in args.servers:  # alternate so drift hits every server alike
                rows[kind].append(await measure(kind, fakes, args))
        header = (
            "| server | CPU per job | added p50, c=1 | streams/s c=128 vs direct | TTFB added "
            "| c=1,024 vs direct | listen drops |"
        )
        if args.workers > 1:
            header += " busiest worker's CPU share |"
        print(header)
        print("|" + "---|" * (header.count("|") - 1))
        for kind, results in rows.items():
            med = {key: statistics.median(r[key] for r in results if key in r) for key in results[0]}
            line = (
                f"| {kind} | {med['cpu_ms']:.2f} ms | {med['added_p50_ms']:+.2f} ms "
                f"| {med['streams_ratio']:.2f}x | {med['ttfb_added_ms']:+.1f} ms "
                f"| {med['c1024_ratio']:.2f}x | {med['drops']:.0f} |"
            )
            if args.workers > 1:
                line += f" {med.get('busiest_share', float('nan')):.2f} |"
            print(line)
    finally:
        for proc in fake_procs:
            proc.terminate()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--fake":
        serve_fake(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="jobs for the CPU measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server (median shown)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
