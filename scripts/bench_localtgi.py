"""Benchmark the localtgi engine on one model, everything measured side by side in one run.

Prints:
  * single-stream throughput (one request alone, tokens / wall time including its prefill),
  * aggregate throughput of N concurrent streams (all submitted at once; total tokens / wall time),
    and its ratio to the single-stream figure,
  * time to first token of the burst (all N arrive together, so prefills queue up),
  * time to first token under load: probe requests arriving one by one while N-1 streams decode,
  * the naive baseline: transformers `generate`, one request at a time, same model and lengths.

Usage: .venv/bin/python scripts/bench_localtgi.py [--model-id smollm2] [--streams 16]
       [--new-tokens 96] [--threads 1]
Absolute numbers depend on the box (2 shared cores here); compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from localtgi.engine import Engine, GenerationStream  # noqa: E402
from localtgi.engine_types import SamplingParams, TokenEvent  # noqa: E402
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
    async for event in engine.submit(ids, params):
        if isinstance(event, TokenEvent):
            if count == 0:
                first = time.perf_counter() - start
            count += 1
    return count, first


def params(new_tokens: int, seed: int) -> SamplingParams:
    # Sampling with a seed: a realistic per-row cost, and no early eos from a greedy loop.
    return SamplingParams(do_sample=True, seed=seed, max_new_tokens=new_tokens, temperature=0.8)


async def bench_engine(lm: LoadedModel, args: argparse.Namespace) -> dict[str, float]:
    engine = Engine(lm, max_batch_size=args.streams, threads=args.threads)
    await engine.start()
    ps = prompts(lm, args.streams)
    n = args.new_tokens
    try:
        await consume(engine, ps[0], SamplingParams(max_new_tokens=4))  # warm-up

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
            async for event in stream:
                if isinstance(event, TokenEvent):
                    probe_ttft.append(time.perf_counter() - start)
                    break
            stream.cancel()
        for s in background:
            s.cancel()
        await asyncio.gather(*drains)
    finally:
        await engine.stop()
    return {
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


def bench_generate(lm: LoadedModel, args: argparse.Namespace) -> float:
    """transformers `generate`, one request after the other: the naive server loop."""
    torch.set_num_threads(args.threads)
    ps = prompts(lm, args.baseline_requests)
    tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i, p in enumerate(ps):
            torch.manual_seed(i)
            out = lm.model.generate(
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
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model-id", default="smollm2")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--baseline-requests", type=int, default=2)
    args = parser.parse_args()
    lm = load_model(args.model_id, progress=lambda m: print(f"  {m}", file=sys.stderr))
    load = os.getloadavg()[0]
    print(f"model {lm.model_id}, {args.threads} thread(s), {args.new_tokens} new tokens/request")
    print(f"box: {os.cpu_count()} cores, load average {load:.2f} at start (shared box: noisy)")
    r = asyncio.run(bench_engine(lm, args))
    baseline = bench_generate(lm, args)
    print(f"single stream            {r['single']:8.1f} tok/s")
    print(f"{args.streams:2d} streams aggregate      {r['aggregate']:8.1f} tok/s")
    print(f"ratio aggregate/single   {r['aggregate'] / r['single']:8.2f} x")
    print(f"TTFT burst ({args.streams} at once)   p50 {r['burst_p50']:.3f} s  max {r['burst_max']:.3f} s")
    print(
        f"TTFT under load ({args.streams - 1} busy) p50 {r['load_p50']:.3f} s  max {r['load_max']:.3f} s"
    )
    print(f"HF generate, sequential  {baseline:8.1f} tok/s")
    print(f"aggregate / HF generate  {r['aggregate'] / baseline:8.2f} x")


if __name__ == "__main__":
    main()
