"""The one error tree of localtgi.

    LocalTGIError
    ├── ValidationError            422 validation
    │   └── GrammarError           422 validation
    ├── OverloadedError            429 overloaded
    ├── GenerationError            424 generation
    ├── IncompleteGenerationError  500 incomplete_generation
    └── ModelLoadError             (startup only; the launcher exits with its message)

Each class knows the HTTP status and TGI `error_type` it is served with; `message` is the text TGI puts
in `{"error": ..., "error_type": ...}` (for validation errors the app adds "Input validation error: ").
"""

from __future__ import annotations


class LocalTGIError(Exception):
    """Base of every error localtgi raises on purpose."""

    status: int = 500
    error_type: str = "generation"

    @property
    def message(self) -> str:
        return str(self)


class ValidationError(LocalTGIError):
    """Raised when a request breaks one of TGI's validation rules."""

    status = 422
    error_type = "validation"


class GrammarError(ValidationError):
    """Raised when a `grammar` cannot be compiled into a constraint."""


class OverloadedError(LocalTGIError):
    """Raised when every `--max-concurrent-requests` permit is taken."""

    status = 429
    error_type = "overloaded"

    def __init__(self, message: str = "Model is overloaded") -> None:
        super().__init__(message)


class GenerationError(LocalTGIError):
    """Raised when the model fails while generating."""

    status = 424
    error_type = "generation"


class IncompleteGenerationError(LocalTGIError):
    """Raised when a generation ends without its finish event (engine stopped, cancelled)."""

    status = 500
    error_type = "incomplete_generation"


class ModelLoadError(LocalTGIError):
    """Raised when a model id cannot be resolved, converted or loaded."""
