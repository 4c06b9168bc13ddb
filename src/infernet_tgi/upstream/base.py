"""What every upstream client offers, whatever protocol it speaks.

Use `Upstream` as the type of the backend a workflow calls. Clients translate their protocol into
`GenerationRequest` in and `Generation` / `StreamDelta` out, and raise only `UpstreamError`s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..constraints import Constraint


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: the prompt and the TGI-named parameters to send (unset ones left out).

    A chat job has `messages` (`{"role", "content": str}` each; `prompt` is then ""), which go to the
    upstream's chat route or through the configured chat template. `constraint` is what the answer
    must be (response_pool / json_format / grammar); clients translate it for their protocol."""

    prompt: str
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: tuple[dict[str, str], ...] | None = None
    constraint: Constraint | None = None


@dataclass(frozen=True)
class Generation:
    """A finished generation, with usage normalised across protocols (None when unknown)."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class StreamDelta:
    """A piece of a streamed generation. The last delta carries `finish_reason`."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Upstream(Protocol):
    """A backend that generates text."""

    @property
    def url(self) -> str: ...

    async def generate(self, request: GenerationRequest) -> Generation: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]: ...

    async def info(self) -> dict[str, Any]: ...
