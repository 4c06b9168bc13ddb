"""Benchmark: the container side by side with calling its (fake TGI) backend directly, in one run.

Run `make bench-container` (or `flock /tmp/bench.lock python scripts/bench_container.py --runs 3`). It
starts fake TGI servers on 127.0.0.1 (0 ms, 200 ms, uniform 100-300 ms per answer, and one streaming
32 tokens 5 ms apart) and, in front of each, the container through its CLI (`infernet-tgi`, so whatever
server and worker count the CLI picks are what is measured; `--workers N` passes `--workers N`). Then:

* added latency at concurrency 1 (p50 / p99, container minus direct), 0 ms backend;
* CPU per job at concurrency 64, 0 ms backend: CPU time of the container's processes (all workers)
  over the jobs served, from /proc; "direct" is the fake backend's own CPU per request;
* throughput at concurrency 256 and 1,024 (200 ms backend) and 256 (uniform 100-300 ms), with the
  kernel's listen-queue drops during each (ListenDrops / ListenOverflows deltas, /proc/net/netstat,
  box-wide);
* streams at concurrency 128 (32 tokens x 5 ms): streams/s and time to first byte p50, and the
  container's CPU per relayed token;
* RSS of each container process, idle (before any load) and after everything.

Nothing is asserted. `--runs N` repeats the whole set with fresh processes and prints each row as
median [min - max]. The load average is printed before and after: numbers from a busy box are not
comparable with a quiet one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
JSON_HEADERS = {"content-type": "application/json"}
PROMPT = "hello there"
JOB = json.dumps({"source": 1, "destination": 1, "data": {"text": PROMPT}, "requires_proof": False}).encode()
STREAM_JOB = json.dumps({"source": 1, "destination": 2, "data": {"text": PROMPT}}).encode()
DIRECT = json.dumps({"inputs": PROMPT, "parameters": {"max_new_tokens": 16, "details": True}}).encode()
DIRECT_STREAM = json.dumps({"inputs": PROMPT, "parameters": {"max_new_tokens": 32, "details": True}}).encode()
TOKENS = 32
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited early ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not start")


def start_fake(*flags: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "faketgi.py"), "--port", str(port), *flags],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/info", proc)
    return proc, url


def container_command(workers: int | None) -> list[str]:
    cli = shutil.which("infernet-tgi", path=str(Path(sys.executable).parent)) or shutil.which("infernet-tgi")
    command = [cli] if cli else [sys.executable, "-m", "infernet_tgi"]
    return command + ([] if workers is None else ["--workers", str(workers)])


def container_env(upstream: str) -> dict[str, str]:
    """The environment every benchmark starts the container with: `upstream`, 16 new tokens, quiet logs."""
    return {
        **os.environ,
        "TGI_INF_WORKFLOW_POSITIONAL_ARGS": json.dumps([upstream, 30]),
        "TGI_INF_WORKFLOW_KW_ARGS": json.dumps({"max_new_tokens": 16}),
        "TGI_INF_LOG_LEVEL": "WARNING",
    }


def start_container(upstream: str, workers: int | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [*container_command(workers), "--host", "127.0.0.1", "--port", str(port)],
        env=container_env(upstream),
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/", proc)
    return proc, url


# --- /proc readings -------------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children.get(current, [])
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICKS


def rss_mb(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                out.append(int(line.split()[1]) / 1024)
    return out


def serving(pids: list[int]) -> list[int]:
    """The processes that serve (a supervisor that only spawns workers has no upstream pool)."""
    return pids if len(pids) == 1 else pids[1:]


def listen_drops() -> int:
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
            return table.get("ListenDrops", 0) + table.get("ListenOverflows", 0)
    return 0


# --- load -----------------------------------------------------------------------------------------


FAILED: dict[str, int] = {}  # url -> requests that got no answer (connection reset or refused)


async def requests(
    session: aiohttp.ClientSession, url: str, body: bytes, total: int, concurrency: int
) -> tuple[list[float], float]:
    """Latencies of `total` POSTs sent by `concurrency` workers, and the wall time they took. A
    request without an answer is counted in FAILED (and costs its time); a non-200 answer stops."""
    latencies: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=JSON_HEADERS) as response:
                    text = await response.read()
            except aiohttp.ClientError:
                FAILED[url] = FAILED.get(url, 0) + 1
                continue
            latencies.append(time.perf_counter() - started)
            if response.status != 200:
                raise SystemExit(f"{url}: HTTP {response.status} {text[:200]!r}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


async def streams(
    session: aiohttp.ClientSession, url: str, body: bytes, total: int, concurrency: int
) -> tuple[list[float], float]:
    """Time to first byte of `total` streams read to the end by `concurrency` workers, and the wall time."""
    firsts: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            async with session.post(url, data=body, headers=JSON_HEADERS) as response:
                if response.status != 200:
                    raise SystemExit(f"{url}: HTTP {response.status} {(await response.read())[:200]!r}")
                first = True
                async for _ in response.content.iter_any():
                    if first:
                        firsts.append(time.perf_counter() - started)
                        first = False

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return firsts, time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Side:
    """One backend, called directly and through its container."""

    fake: subprocess.Popen[bytes]
    direct: str
    container: subprocess.Popen[bytes]
    job: str


Row = dict[str, float]
SKIPPED = "(not run)"
ROWS = ("latency", "cpu", "c256", "c1024", "c256-uniform", "streams")


async def measure(args: argparse.Namespace, sides: dict[str, Side]) -> Row:
    row: Row = {}
    n = args.scale
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        fast, slow, uniform, stream = sides["fast"], sides["slow"], sides["uniform"], sides["stream"]
        for side in sides.values():  # warm up connections and code paths
            body = STREAM_JOB if side is stream else JOB
            await requests(session, side.job, body, 64, 8)

        only = set(args.only or ROWS)
        # concurrency 1, 0 ms backend: alternate so drift hits both sides alike
        if "latency" in only:
            await _latency(session, fast, n, row)
        # CPU per job, concurrency 64, 0 ms backend
        if "cpu" in only:
            await _cpu_per_job(session, fast, n, row)
        # throughput against slow backends, with listen drops
        for name, side, concurrency, waves in (
            ("c256", slow, 256, 8),
            ("c1024", slow, 1024, 4),
            ("c256 uniform", uniform, 256, 8),
        ):
            if name.replace(" ", "-") in only:
                await _throughput(session, name, side, concurrency, concurrency * waves * n, row)
        # streams: 128 at a time, 32 tokens x 5 ms
        if "streams" in only:
            await _streams(session, stream, n, row)
    return row


async def _latency(session: aiohttp.ClientSession, fast: Side, n: int, row: Row) -> None:
    d_all: list[float] = []
    c_all: list[float] = []
    for _ in range(3):
        d_all += (await requests(session, fast.direct, DIRECT, 200 * n, 1))[0]
        c_all += (await requests(session, fast.job, JOB, 200 * n, 1))[0]
    row["c1 direct p50 ms"] = pct(d_all, 0.5) * 1e3
    row["c1 direct p99 ms"] = pct(d_all, 0.99) * 1e3
    row["c1 added p50 ms"] = (pct(c_all, 0.5) - pct(d_all, 0.5)) * 1e3
    row["c1 added p99 ms"] = (pct(c_all, 0.99) - pct(d_all, 0.99)) * 1e3


async def _cpu_per_job(session: aiohttp.ClientSession, fast: Side, n: int, row: Row) -> None:
    jobs = 2000 * n
    backend = tree(fast.fake.pid)
    before = cpu_seconds(backend)
    await requests(session, fast.direct, DIRECT, jobs, 64)
    row["c64 direct CPU/job ms"] = (cpu_seconds(backend) - before) / jobs * 1e3
    pids = tree(fast.container.pid)
    before = cpu_seconds(pids)
    await requests(session, fast.job, JOB, jobs, 64)
    row["c64 container CPU/job ms"] = (cpu_seconds(pids) - before) / jobs * 1e3


async def _throughput(
    session: aiohttp.ClientSession, name: str, side: Side, concurrency: int, total: int, row: Row
) -> None:
        FAILED.clear()
        _, wall = await requests(session, side.direct, DIRECT, total, concurrency)
        drops = listen_drops()
        _, c_wall = await requests(session, side.job, JOB, total, concurrency)
        row[f"{name} direct req/s"] = total / wall
        row[f"{name} ratio"] = wall / c_wall
        row[f"{name} listen drops"] = listen_drops() - drops
        row[f"{name} resets"] = FAILED.get(side.job, 0)



async def _streams(session: aiohttp.ClientSession, stream: Side, n: int, row: Row) -> None:
    total = 128 * 4 * n
    d_first, d_wall = await streams(session, stream.direct, DIRECT_STREAM, total, 128)
    pids = tree(stream.container.pid)
    before = cpu_seconds(pids)
    c_first, c_wall = await streams(session, stream.job, STREAM_JOB, total, 128)
    spent = cpu_seconds(pids) - before
    row["streams direct /s"] = total / d_wall
    row["streams ratio"] = d_wall / c_wall
    row["streams direct TTFB p50 ms"] = pct(d_first, 0.5) * 1e3
    row["streams added TTFB p50 ms"] = (pct(c_first, 0.5) - pct(d_first, 0.5)) * 1e3
    row["CPU per relayed token us"] = spent / (total * TOKENS) * 1e6


async def run_once(args: argparse.Namespace) -> Row:
    procs: list[subprocess.Popen[bytes]] = []
    words = " ".join(f"w{i}" for i in range(TOKENS))
    try:
        fakes = {
            "fast": start_fake("--delay", "0"),
            "slow": start_fake("--delay", "0.2"),
            "uniform": start_fake("--delay", "0.1", "--delay-max", "0.3"),
            "stream": start_fake("--token-delay", "0.005", "--text", words),
        }
        procs += [proc for proc, _ in fakes.values()]
        sides = {}
        for name, (proc, url) in fakes.items():
            container, job_url = start_container(url, args.workers)
            procs.append(container)
            sides[name] = Side(proc, url + ("/generate_stream" if name == "stream" else "/generate"),
                               container, job_url + "/service_output")
        await asyncio.sleep(1.0)  # let every worker finish importing before the idle reading
        containers = [tree(side.container.pid) for side in sides.values()]
        idle = [mb for pids in containers for mb in rss_mb(serving(pids))]
        row = await measure(args, sides)
        after = [mb for pids in containers for mb in rss_mb(serving(pids))]
        row["RSS idle MB (max process)"] = max(idle)
        row["RSS after MB (max process)"] = max(after)
        row["container processes"] = len(containers[0])
        return row
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def summary(rows: list[Row]) -> None:
    def cell(key: str, fmt: str) -> str:
        if key not in rows[0]:
            return SKIPPED
        values = [row[key] for row in rows]
        mid = statistics.median(values)
        if len(values) == 1:
            return format(mid, fmt)
        return f"{format(mid, fmt)} [{format(min(values), fmt)} - {format(max(values), fmt)}]"

    table = [
        ("added latency, concurrency 1, 0 ms backend: p50 / p99",
         f"{cell('c1 direct p50 ms', '.2f')} / {cell('c1 direct p99 ms', '.2f')} ms",
         f"+{cell('c1 added p50 ms', '.2f')} / +{cell('c1 added p99 ms', '.2f')} ms"),
        ("CPU per job, concurrency 64, 0 ms backend",
         f"{cell('c64 direct CPU/job ms', '.3f')} ms (backend)",
         f"{cell('c64 container CPU/job ms', '.3f')} ms"),
        ("throughput, concurrency 256, 200 ms backend",
         f"{cell('c256 direct req/s', '.0f')} req/s",
         f"{cell('c256 ratio', '.2f')}x, listen drops {cell('c256 listen drops', '.0f')}, "
         f"no answer {cell('c256 resets', '.0f')}"),
        ("throughput, concurrency 1,024, 200 ms backend",
         f"{cell('c1024 direct req/s', '.0f')} req/s",
         f"{cell('c1024 ratio', '.2f')}x, listen drops {cell('c1024 listen drops', '.0f')}, "
         f"no answer {cell('c1024 resets', '.0f')}"),
        ("throughput, concurrency 256, backend uniform 100-300 ms",
         f"{cell('c256 uniform direct req/s', '.0f')} req/s",
         f"{cell('c256 uniform ratio', '.2f')}x, listen drops {cell('c256 uniform listen drops', '.0f')}, "
         f"no answer {cell('c256 uniform resets', '.0f')}"),
        ("streams, concurrency 128, 32 tokens x 5 ms: streams/s, TTFB p50",
         f"{cell('streams direct /s', '.0f')}/s, {cell('streams direct TTFB p50 ms', '.1f')} ms",
         f"{cell('streams ratio', '.2f')}x, +{cell('streams added TTFB p50 ms', '.1f')} ms"),
        ("CPU per relayed token", "-", f"{cell('CPU per relayed token us', '.1f')} us"),
        ("RSS per process, idle / after the benchmark", "-",
         f"{cell('RSS idle MB (max process)', '.0f')} / {cell('RSS after MB (max process)', '.0f')} MB"),
    ]
    table = [line for line in table if SKIPPED not in line[2]]  # rows left out with --only
    width = max(len(name) for name, _, _ in table)
    print(f"| {'measure':<{width}} | direct | container |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for name, direct, container in table:
        print(f"| {name:<{width}} | {direct} | {container} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="repeat everything; rows show median [min - max]")
    parser.add_argument("--workers", type=int, help="pass --workers N to the CLI (default: the CLI's own)")
    parser.add_argument("--only", action="append", choices=ROWS,
                        help="run only this row (repeatable; default: all)")
    parser.add_argument("--scale", type=int, default=1, help="multiply the request counts")
    args = parser.parse_args()
    workers = "the CLI's default" if args.workers is None else str(args.workers)
    print(f"container: {' '.join(container_command(args.workers))} (workers: {workers}); "
          f"{os.cpu_count()} CPUs; load average before {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for index in range(args.runs):
        row = asyncio.run(run_once(args))
        rows.append(row)
        values = ", ".join(f"{key} {value:.3g}" for key, value in row.items())
        print(f"run {index + 1}/{args.runs}: {values}", flush=True)
    print(f"load average after {os.getloadavg()[0]:.2f} (1 min) {os.getloadavg()[1]:.2f} (5 min); "
          f"{rows[0]['container processes']:.0f} container processes each")
    summary(rows)


if __name__ == "__main__":
    main()
