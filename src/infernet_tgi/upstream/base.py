"""What every upstream client offers, whatever protocol it speaks.

Use `Upstream` as the type of the backend the core calls. Clients translate their protocol into
`GenerationRequest` in and `Generation` / `StreamDelta` out, and raise only `InfernetTGIError`s:
`UpstreamError`s for what the backend did, `UnsupportedRequestError` for what they refuse to send.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

from ..generation import Generation, GenerationRequest, StreamDelta

__all__ = ["Generation", "GenerationRequest", "StreamDelta", "Upstream"]


class Upstream(Protocol):
    """A backend that generates text."""

    @property
    def url(self) -> str: ...

    async def generate(self, request: GenerationRequest) -> Generation: ...

    def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamDelta, None]:
        """The deltas of one generation; close it (`contextlib.aclosing`) to cancel upstream."""
        ...

    async def info(self) -> dict[str, Any]: ...

    async def health(self) -> None:
        """Returns when the backend can serve; raises an `UpstreamError` saying why not."""
        ...

    async def aclose(self) -> None:
        """Stop background work (health checks); the shared HTTP client is closed by its owner."""
        ...
