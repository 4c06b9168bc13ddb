from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from containerkit import Waits, env_for
from faketgi import FakeTGI
from infernet_tgi import Settings, create_app


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeTGI]:
    with FakeTGI() as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeTGI) -> FakeTGI:
    fake_server.reset()
    return fake_server


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
async def app_for(waits: Waits) -> AsyncIterator[Any]:
    """Build an app from an env dict and run its lifespan; yields a factory returning a test client."""
    started: list[Quart] = []

    async def make(env: dict[str, str]) -> Client:
        app = create_app(Settings.from_env(env), sleep=waits)
        await app.startup()
        started.append(app)
        return app.test_client()

    yield make
    for app in started:
        await app.shutdown()


@pytest.fixture
async def client(app_for: Any, fake: FakeTGI) -> Client:
    return await app_for(env_for(fake.url))  # type: ignore[no-any-return]
