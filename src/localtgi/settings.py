"""Launcher settings of localtgi, read once from the command line into a frozen object.

Use `Settings` to configure `create_app` and the `localtgi` launcher. Token limits that depend on the model
(`max_input_tokens`, `max_total_tokens`) may be left `None`; `Settings.limits_for` resolves them the way
TGI's launcher does once the model's context length is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from localtgi.errors import SettingsError

# TGI's launcher caps the derived total at 4096 tokens when --max-total-tokens is not given.
_DEFAULT_TOTAL_CAP = 4096


@dataclass(frozen=True)
class Limits:
    """The request limits the validator enforces, every value resolved."""

    max_input_tokens: int
    max_total_tokens: int
    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_client_batch_size: int = 4


@dataclass(frozen=True)
class Settings:
    """Everything the launcher accepts, with TGI's launcher defaults."""

    model_id: str = "smollm2"
    hostname: str = "127.0.0.1"
    port: int = 8080
    max_concurrent_requests: int = 128
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_client_batch_size: int = 4
    max_batch_size: int = 16
    num_threads: int = 1
    exact: bool = False
    payload_limit: int = 2_000_000
    compute_type: str = "cpu"
    api_key: str | None = None
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        positive = {
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_best_of": self.max_best_of,
            "max_client_batch_size": self.max_client_batch_size,
            "max_batch_size": self.max_batch_size,
            "num_threads": self.num_threads,
            "payload_limit": self.payload_limit,
        }
        for name, value in positive.items():
            if value < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name, value in (
            ("max_stop_sequences", self.max_stop_sequences),
            ("max_top_n_tokens", self.max_top_n_tokens),
        ):
            if value < 0:
                raise SettingsError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"--port must be within 0..65535, got {self.port}")
        if self.max_input_tokens is not None and self.max_input_tokens < 1:
            raise SettingsError(f"--max-input-tokens must be >= 1, got {self.max_input_tokens}")
        if self.max_total_tokens is not None and self.max_total_tokens < 2:
            raise SettingsError(f"--max-total-tokens must be >= 2, got {self.max_total_tokens}")
        if (
            self.max_input_tokens is not None
            and self.max_total_tokens is not None
            and self.max_input_tokens >= self.max_total_tokens
        ):
            raise SettingsError(
                "`max_input_tokens` must be < `max_total_tokens`. Given: "
                f"{self.max_input_tokens} and {self.max_total_tokens}"
            )

    def limits_for(self, max_position_embeddings: int) -> Limits:
        """Resolve the token limits for a model with this context length (TGI's launcher rules)."""
        total = self.max_total_tokens
        if total is None:
            derived = min(max_position_embeddings, _DEFAULT_TOTAL_CAP)
            total = derived if self.max_input_tokens is None else max(derived, self.max_input_tokens + 1)
        if total > max_position_embeddings:
            raise SettingsError(
                f"`max_total_tokens` ({total}) must be <= the model's context length "
                f"({max_position_embeddings})"
            )
        inputs = self.max_input_tokens if self.max_input_tokens is not None else total - 1
        if inputs >= total:
            raise SettingsError(
                f"`max_input_tokens` must be < `max_total_tokens`. Given: {inputs} and {total}"
            )
        return Limits(
            max_input_tokens=inputs,
            max_total_tokens=total,
            max_best_of=self.max_best_of,
            max_stop_sequences=self.max_stop_sequences,
            max_top_n_tokens=self.max_top_n_tokens,
            max_client_batch_size=self.max_client_batch_size,
        )
