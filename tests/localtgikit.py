"""A real hypercorn-served localtgi app on a free loopback port, in a background thread with its own
event loop (like a separate server process, but with the app's engine and permits inspectable)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from localtgi.app import create_app
from localtgi.app_state import EXTENSION, Server
from localtgi.cli import serve
from localtgi.models import LoadedModel
from localtgi.settings import Settings

T = TypeVar("T")


class RunningServer:
    """A localtgi app served by hypercorn on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, settings: Settings, model: LoadedModel) -> None:
        self.settings = settings
        self.app = create_app(settings, model)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="localtgi-test-server", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(port: int, _serving: bool) -> None:
                self.port = port
                self._ready.set()

            await serve(self.app, self.settings, shutdown=self._stop, ready=ready)

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self._error = exc
            self._ready.set()

    def start(self) -> RunningServer:
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None:
            raise RuntimeError(f"server did not start: {self._error!r}")
        return self

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    async def run_on_server(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on the server's own event loop (e.g. to stop its engine mid-request)."""
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> Server:
        found: Server = self.app.extensions[EXTENSION]
        return found
