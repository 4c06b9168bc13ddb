"""Benchmark: what signing answers costs (TGI_INF_ATTESTATION_KEY on vs off).

Run `.venv/bin/python scripts/bench_attestation.py`. It prints:

* the cost of one attestation in this process (two keccaks and one libsecp256k1 signature), for a short
  and an 8 KB answer;
* on-chain job latency p50/p99 through two containers in front of the same fake TGI (0 ms answers), one
  without a key and one with, at concurrency 1 and 16, measured in alternating rounds, and the difference.

Nothing is asserted; the numbers are printed with the load average (they are indicative on a busy box).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from eth_abi.abi import encode

from bench_container import (
    JSON_HEADERS,
    container_env,
    free_port,
    pct,
    requests,
    start_fake,
    wait_ready,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from infernet_tgi.attestation import Attester, keccak256  # noqa: E402

KEY = keccak256(b"bench_attestation key").hex()  # a throwaway key, never used on a real chain
JOB = {
    "source": 0,
    "destination": 0,
    "data": encode(["string"], ["What is the capital of France?"]).hex(),
    "requires_proof": True,
}


def signing_cost(repeat: int) -> None:
    attester = Attester(bytes.fromhex(KEY), 1)
    question = encode(["string"], ["What is the capital of France?"])
    for label, answer in (("short answer", "Paris."), ("8 KB answer", "x" * 8192)):
        raw = encode(["string"], [answer])
        attester.attest(question, raw, "model")
        started = time.perf_counter()
        for _ in range(repeat):
            attester.attest(question, raw, "model")
        per = (time.perf_counter() - started) / repeat * 1e6
        print(f"one attestation, {label}: {per:.1f} us (mean of {repeat}, in-process)")


def start_container(upstream: str, signed: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**container_env(upstream), "PYTHONPATH": str(ROOT / "src")}
    if signed:
        env |= {"TGI_INF_ATTESTATION_KEY": KEY, "TGI_INF_ATTESTATION_CHAIN_ID": "1"}
    else:
        env |= {"TGI_INF_ATTESTATION_KEY": "", "TGI_INF_ATTESTATION_CHAIN_ID": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "infernet_tgi", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/", proc)
    return proc, url


async def compare(args: argparse.Namespace) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        fake, fake_url = start_fake("--delay", "0")
        procs.append(fake)
        plain, plain_url = start_container(fake_url, signed=False)
        signed, signed_url = start_container(fake_url, signed=True)
        procs += [plain, signed]
        plain_job, signed_job = plain_url + "/service_output", signed_url + "/service_output"
        plain_body = json.dumps({**JOB, "requires_proof": False}).encode()
        signed_body = json.dumps(JOB).encode()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as client:
            async with client.post(signed_job, json=JOB, headers=JSON_HEADERS) as response:
                first = await response.json()
            assert first.get("proof"), f"the signed container gave no proof: {first}"
            await requests(client, plain_job, plain_body, 200, 8)  # warm up
            await requests(client, signed_job, signed_body, 200, 8)
            for concurrency, total in ((1, args.requests // 4), (16, args.requests)):
                off: list[float] = []
                on: list[float] = []
                for _ in range(args.rounds):  # alternate so drift hits both alike
                    off += (await requests(client, plain_job, plain_body, total, concurrency))[0]
                    on += (await requests(client, signed_job, signed_body, total, concurrency))[0]
                o50, o99 = pct(off, 0.5) * 1e3, pct(off, 0.99) * 1e3
                s50, s99 = pct(on, 0.5) * 1e3, pct(on, 0.99) * 1e3
                print(
                    f"on-chain jobs, concurrency {concurrency:>2} ({len(on)} each): "
                    f"off p50 {o50:.2f} ms p99 {o99:.2f} ms | on p50 {s50:.2f} ms p99 {s99:.2f} ms | "
                    f"added p50 {s50 - o50:+.2f} ms p99 {s99 - o99:+.2f} ms"
                )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per measurement")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} (1 min)")
    signing_cost(2000)
    asyncio.run(compare(args))


if __name__ == "__main__":
    main()
