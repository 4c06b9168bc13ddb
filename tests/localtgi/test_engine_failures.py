"""How the engine fails part of its work and goes on: a prefill forward that raises."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from localtgi import prefill
from localtgi.engine import Engine, GenerationStream
from localtgi.engine_types import SamplingParams
from localtgi.errors import GenerationError
from localtgi.models import LoadedModel, load_model
from localtgi.network import Network

POISON = 13  # a prompt holding this token makes its prefill forward raise


class PoisonedNetwork(Network):
    """The tiny model's network, whose prompt forwards raise when a prompt holds POISON."""

    def run(self, input_ids: Any, *args: Any) -> Any:
        if (input_ids == POISON).any():
            raise RuntimeError("poisoned forward")
        return super().run(input_ids, *args)


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model("tiny")


async def tokens_of(stream: GenerationStream) -> int:
    return len([e async for e in stream])


async def test_a_failing_prefill_forward_fails_its_group_only(tiny: LoadedModel) -> None:
    """Prompts that share a forward fail together when it raises; a prompt in another forward,
    and requests after it, are served as usual."""
    poisoned, neighbour, other = [5, 6, 7, POISON], [5, 6, 7, 8], list(range(20, 40))
    assert prefill.groups([poisoned, neighbour, other]) == [[0, 1], [2]]
    gate = threading.Event()

    def gated() -> Network:  # holds the warm-up, so that the three arrive together
        assert gate.wait(30)
        return PoisonedNetwork(tiny.network, tiny.shape, threads=1, exact=True)

    eng = Engine(tiny, exact=True, open_network=gated)
    await eng.start()
    try:
        params = SamplingParams(max_new_tokens=4)
        streams = [eng.submit(prompt, params) for prompt in (poisoned, neighbour, other)]
        gate.set()
        gathered = asyncio.gather(*(tokens_of(s) for s in streams), return_exceptions=True)
        results = await asyncio.wait_for(gathered, 60)
        for failed in results[:2]:
            assert isinstance(failed, GenerationError), results
            assert str(failed) == "RuntimeError: poisoned forward"
        assert results[2] == 4
        assert await tokens_of(eng.submit([9, 10, 11], params)) == 4
        assert eng.failure is None
    finally:
        gate.set()
        await eng.stop()
