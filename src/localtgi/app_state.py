"""The shared resources of one running localtgi app (`Server`), and how routes reach them.

`create_app`'s lifespan builds one `Server` (model, engine, validator, permits, metrics) and stores it on
the app; routes call `server()` to get it. Nothing here is a module global, so several apps can live in one
process (tests do this).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from quart import current_app

from localtgi.errors import NotReadyError
from localtgi.settings import Limits, Settings

if TYPE_CHECKING:
    from localtgi.engine import Engine
    from localtgi.inference import Inference
    from localtgi.metrics import Metrics
    from localtgi.models import LoadedModel

EXTENSION = "localtgi"
ROUTER = "text-generation-router"


def package_version() -> str:
    try:
        return version("infernet-tgi")
    except PackageNotFoundError:
        return "0.0.0"


@dataclass
class Server:
    settings: Settings
    model: LoadedModel
    engine: Engine
    limits: Limits
    inference: Inference
    metrics: Metrics
    version: str
    healthy: bool = True

    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def system_fingerprint(self) -> str:
        return f"{self.version}-native"


def server() -> Server:
    """The Server of the app handling the current request (503 until startup finished)."""
    found: Server | None = current_app.extensions.get(EXTENSION)
    if found is None:
        raise NotReadyError("unhealthy")
    return found


async def until_settled(app: Any) -> bool:
    """Wait until the app's engine has compiled and warmed up its network (True) or could not
    (False: it died or was stopped first)."""
    found: Server | None = app.extensions.get(EXTENSION)
    if found is None:
        return False
    await found.engine.settled()
    return found.healthy and found.engine.warm and found.engine.failure is None


async def stop_generating(app: Any) -> None:
    """Mark the app unhealthy and stop its engine: unfinished requests fail with TGI's errors."""
    found: Server | None = app.extensions.get(EXTENSION)
    if found is not None:
        found.healthy = False
        await found.engine.stop()
