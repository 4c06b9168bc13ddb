"""Benchmark localtgi's engine (OpenVINO, the GGUF's 4-bit weights, continuous batching) against the naive
reference (transformers `generate` in torch fp32, one request at a time) on the same model, in one run.

Prints the rows of the README's table:
  * single-stream throughput (one request alone, tokens / wall time including its prefill),
  * aggregate throughput of N concurrent streams (all submitted at once; total tokens / wall time),
  * time to first token of a request joining N-1 running streams (probes, one at a time) and of
    N requests arriving at once,
  * resident memory of this process with the engine idle, and after the benchmark,
  * start time of `python -m localtgi` to a healthy /health, with the model already prepared and
    (with --first-start) from an empty cache (converting the GGUF),
  * the naive reference's single-stream throughput and resident memory.

Usage: flock /tmp/bench.lock .venv/bin/python scripts/bench_localtgi.py [--model-id smollm2]
       [--streams 16] [--new-tokens 96] [--threads 1] [--runs 3] [--first-start] [--exact]
`--runs N` repeats localtgi's rows, each run in a fresh process, and prints median [min - max]
(`make bench-localtgi` runs three); the reference runs once.
Absolute numbers depend on the box (2 shared cores here, and the load average is printed): compare
rows measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from localtgi.engine import Engine, GenerationStream  # noqa: E402
from localtgi.engine_types import SamplingParams  # noqa: E402
from localtgi.models import LoadedModel, load_model  # noqa: E402

TOPICS = [
    "a cat", "a lighthouse", "the sea", "a robot", "Paris", "an old tree", "music", "the moon",
    "a king", "rain", "a night train", "coffee", "snow", "a small bird", "fire", "a library",
]


def prompts(lm: LoadedModel, n: int) -> list[list[int]]:
    tok = lm.tokenizer
    out = []
    for i in range(n):
        text = tok.apply_chat_template(
            [{"role": "user", "content": f"Write a short story about {TOPICS[i % len(TOPICS)]}."}],
            add_generation_prompt=True,
            tokenize=False,
        )
        out.append(list(tok.encode(text)))
    return out


async def consume(engine: Engine, ids: list[int], params: SamplingParams) -> tuple[int, float]:
    """Generated token count and seconds to the first token."""
    start = time.perf_counter()
    first = -1.0
    count = 0
    async for _event in engine.submit(ids, params):
        if count == 0:
            first = time.perf_counter() - start
        count += 1
    return count, first


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory in MB (VmRSS)."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) / 1024 if found else float("nan")


def params(new_tokens: int, seed: int) -> SamplingParams:
    # Sampling with a seed: a realistic per-row cost, and no early eos from a greedy loop.
    return SamplingParams(do_sample=True, seed=seed, max_new_tokens=new_tokens, temperature=0.8)


async def bench_engine(lm: LoadedModel, args: argparse.Namespace) -> dict[str, float]:
    engine = Engine(lm, max_batch_size=args.streams, threads=args.threads, exact=args.exact)
    await engine.start()
    ps = prompts(lm, args.streams)
    n = args.new_tokens
    try:
        await consume(engine, ps[0], SamplingParams(max_new_tokens=4))  # warm-up
        idle_rss = rss_mb()

        start = time.perf_counter()
        single_tokens, _ = await consume(engine, ps[1], params(n, 1))
        single = single_tokens / (time.perf_counter() - start)

        start = time.perf_counter()
        results = await asyncio.gather(
            *(consume(engine, p, params(n, 100 + i)) for i, p in enumerate(ps))
        )
        aggregate = sum(r[0] for r in results) / (time.perf_counter() - start)
        burst_ttft = sorted(r[1] for r in results)

        # Under load: N-1 long streams decode while probes arrive one at a time.
        background = [
            engine.submit(p, params(100_000, 200 + i)) for i, p in enumerate(ps[: args.streams - 1])
        ]
        started = [asyncio.Event() for _ in background]
        drains = [asyncio.create_task(drain(s, e)) for s, e in zip(background, started, strict=True)]
        for event in started:
            await event.wait()
        probe_ttft = []
        for i in range(args.probes):
            await asyncio.sleep(0.25)
            stream = engine.submit(ps[-1 - i % 4], params(n, 300 + i))
            start = time.perf_counter()
            async for _event in stream:
                probe_ttft.append(time.perf_counter() - start)
                break
            stream.cancel()
        for s in background:
            s.cancel()
        await asyncio.gather(*drains)
        after_rss = rss_mb()
    finally:
        await engine.stop()
    return {
        "idle_rss": idle_rss,
        "after_rss": after_rss,
        "single": single,
        "aggregate": aggregate,
        "burst_p50": statistics.median(burst_ttft),
        "burst_max": burst_ttft[-1],
        "load_p50": statistics.median(probe_ttft),
        "load_max": max(probe_ttft),
    }


async def drain(stream: GenerationStream, started: asyncio.Event) -> None:
    async for _ in stream:
        started.set()


def bench_generate(args: argparse.Namespace) -> tuple[float, float]:
    """transformers `generate` in fp32, one request after the other: the naive server loop.

    Runs in a child process so that its memory is its own; returns (tok/s, resident MB)."""
    out = subprocess.run(
        [sys.executable, __file__, "--reference-only", "--model-id", args.model_id,
         "--new-tokens", str(args.new_tokens), "--threads", str(args.threads),
         "--baseline-requests", str(args.baseline_requests)],
        capture_output=True, text=True, check=True, timeout=1800,
    )
    speed, rss = out.stdout.split()[-2:]
    return float(speed), float(rss)


def reference_main(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from localtgi.models import build_tiny_torch, smollm2_gguf_path

    torch.set_num_threads(args.threads)
    lm = load_model(args.model_id)
    if args.model_id == "tiny":
        model, _ = build_tiny_torch()
    else:
        gguf = smollm2_gguf_path()
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    ps = prompts(lm, args.baseline_requests)
    tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i, p in enumerate(ps):
            torch.manual_seed(i)
            out = model.generate(
                torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=True,
                temperature=0.8,
                top_k=0,
                top_p=1.0,
                pad_token_id=lm.tokenizer.pad_token_id or 0,
            )
            tokens += out.shape[1] - len(p)
    print(f"{tokens / (time.perf_counter() - start):.2f} {rss_mb():.1f}")


def start_seconds(model_id: str, threads: int, cache: str | None) -> tuple[float, float]:
    """Seconds from launching `python -m localtgi` to /health answering 200 (once the network is
    compiled, or loaded from its compiled copy, and warmed up), and to the first generated token."""
    env = dict(os.environ)
    if cache is not None:
        env["LOCALTGI_CACHE"] = cache
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "localtgi", "--model-id", model_id, "--port", "0",
         "--num-threads", str(threads)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            ready = re.match(r"localtgi ready: .* on (http://\S+)", line)
            if ready:
                while httpx.get(f"{ready.group(1)}/health", timeout=10).status_code != 200:
                    time.sleep(0.05)
                healthy = time.perf_counter() - start
                body = {"inputs": "Hello", "parameters": {"max_new_tokens": 1}}
                httpx.post(f"{ready.group(1)}/generate", json=body, timeout=120).raise_for_status()
                return healthy, time.perf_counter() - start
        raise RuntimeError(f"localtgi exited with {proc.wait()}")
    finally:
        proc.terminate()
        proc.wait(30)


def one_run(lm: LoadedModel, args: argparse.Namespace) -> dict[str, float]:
    """Every localtgi row once: the engine in this process, the starts in child processes."""
    r = asyncio.run(bench_engine(lm, args))
    r["start_health"], r["start_token"] = start_seconds(args.model_id, args.threads, None)
    if args.first_start:
        with tempfile.TemporaryDirectory() as empty:
            r["first_health"], r["first_token"] = start_seconds(args.model_id, args.threads, empty)
    r["load"] = os.getloadavg()[0]
    return r


def repeated(args: argparse.Namespace) -> list[dict[str, float]]:
    """`one_run` in a fresh process per run, so that each run's memory rows are its own."""
    results = []
    for index in range(args.runs):
        child = [sys.executable, __file__, "--one-run", "--model-id", args.model_id,
                 "--streams", str(args.streams), "--new-tokens", str(args.new_tokens),
                 "--threads", str(args.threads), "--probes", str(args.probes)]
        child += ["--first-start"] if args.first_start and index == 0 else []
        child += ["--exact"] if args.exact else []
        out = subprocess.run(child, capture_output=True, text=True, check=True, timeout=1800)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"run {index + 1}/{args.runs}: " + ", ".join(
            f"{k} {v:.2f}" for k, v in results[-1].items()), flush=True)
    return results


def spread(values: list[float], fmt: str) -> str:
    """The median, with [min - max] when there were several runs."""
    text = format(statistics.median(values), fmt)
    if len(values) > 1:
        text += f" [{min(values):{fmt}} - {max(values):{fmt}}]"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model-id", default="smollm2")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--baseline-requests", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1,
                        help="repeat localtgi's rows in fresh processes; rows show median [min - max]")
    parser.add_argument("--first-start", action="store_true", help="also time a start from an empty cache")
    parser.add_argument("--exact", action="store_true", help="float32 activations (localtgi --exact)")
    parser.add_argument("--reference-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_only:
        reference_main(args)
        return
    if args.one_run:
        lm = load_model(args.model_id)
        print(json.dumps(one_run(lm, args)))
        return
    lm = load_model(args.model_id, progress=lambda m: print(f"  {m}", file=sys.stderr))
    activations = "float32" if args.exact else "int8"
    print(f"model {lm.model_id}, {args.threads} thread(s), {activations} activations, "
          f"{args.new_tokens} new tokens/request, {args.runs} run(s)")
    print(f"box: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start (shared box: noisy)")
    runs = repeated(args) if args.runs > 1 else [one_run(lm, args)]
    baseline, baseline_rss = bench_generate(args)

    def row(key: str, fmt: str = ".0f") -> str:
        return spread([r[key] for r in runs], fmt)

    n = args.streams
    print("| measure | localtgi (OpenVINO, 4-bit weights, batched) | naive reference (torch fp32 generate) |")
    print("|---|---|---|")
    print(f"| one stream | {row('single')} tok/s | {baseline:.0f} tok/s |")
    print(f"| {n} concurrent streams, aggregate | {row('aggregate')} tok/s "
          f"| {baseline:.0f} tok/s (one at a time) |")
    print(f"| time to first token, joining {n - 1} running: p50 / max | {row('load_p50', '.2f')} s / "
          f"{row('load_max', '.2f')} s | - |")
    print(f"| time to first token, {n} arriving at once: p50 / max | {row('burst_p50', '.2f')} s / "
          f"{row('burst_max', '.2f')} s | - |")
    print(f"| resident memory, idle / after the benchmark | {row('idle_rss')} / {row('after_rss')} MB "
          f"| {baseline_rss:.0f} MB after {args.baseline_requests} requests |")
    print(f"| start to /health 200 (compiled and warmed up), model prepared | {row('start_health', '.1f')} s "
          f"(first token {row('start_token', '.1f')} s) | - |")
    firsts = [r for r in runs if "first_health" in r]
    if firsts:
        print(f"| start from an empty cache (GGUF conversion) | {firsts[0]['first_health']:.1f} s "
              f"(first token {firsts[0]['first_token']:.1f} s) | - |")
    print(f"load average at end: {os.getloadavg()[0]:.2f}; per run: "
          + " / ".join(f"{r['load']:.2f}" for r in runs))


if __name__ == "__main__":
    main()
