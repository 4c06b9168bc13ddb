"""Fixtures for localtgi's HTTP tests: the tiny model once per session, and real hypercorn-served apps
on free loopback ports (see localtgikit.RunningServer)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from localtgi.models import LoadedModel, load_model
from localtgi.settings import Settings
from localtgikit import RunningServer


@pytest.fixture(scope="session")
def tiny_model() -> LoadedModel:
    return load_model("tiny")


BASE = Settings(model_id="tiny", hostname="127.0.0.1", port=0, max_batch_size=8)


def _start(model: LoadedModel, **overrides: Any) -> Iterator[RunningServer]:
    server = RunningServer(replace(BASE, **overrides), model).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def localtgi(tiny_model: LoadedModel) -> Iterator[RunningServer]:
    """The shared server with TGI's default limits (tiny model: 2048 total tokens)."""
    yield from _start(tiny_model)


@pytest.fixture(scope="session")
def limited(tiny_model: LoadedModel) -> Iterator[RunningServer]:
    """A server with --max-concurrent-requests 1 and --max-input-tokens 64."""
    yield from _start(tiny_model, max_concurrent_requests=1, max_input_tokens=64,
                      max_total_tokens=2048)
