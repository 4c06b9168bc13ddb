"""Hostile-job tests send many jobs to one running container process (module-scoped) in front of one
fake TGI; `fake` here is that TGI, reset for each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from containerkit import RunningContainer, env_for
from faketgi import FakeTGI


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeTGI]:
    with FakeTGI() as server:
        yield server


@pytest.fixture(scope="module")
def container(upstream: FakeTGI) -> Iterator[str]:
    with RunningContainer(env_for(upstream.url)) as url:
        yield url


@pytest.fixture
def fake(upstream: FakeTGI) -> FakeTGI:
    upstream.reset()
    return upstream
