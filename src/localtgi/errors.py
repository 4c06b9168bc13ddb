"""The one error tree of localtgi.

    LocalTGIError
    ├── ValidationError            422 validation
    │   └── GrammarError           422 validation
    ├── TemplateError              422 template_error (chat template failed to render)
    ├── RequestRejectedError       422 with its own error_type (suffix, batch size, tools)
    ├── OverloadedError            429 overloaded
    ├── GenerationError            424 generation
    ├── IncompleteGenerationError  500 incomplete_generation
    ├── NotReadyError              503 healthcheck (model or engine not serving)
    ├── RequestBodyError           400/413/415/422 plain text (body rejected before any handler)
    ├── ModelLoadError             (startup only; the launcher exits with its message)
    └── SettingsError              (startup only; the launcher exits with its message)

Foreign exceptions become a GenerationError in `translate`, at the request boundary. Each class knows
the HTTP status and TGI `error_type` it is served with; `message` is the text TGI puts
in `{"error": ..., "error_type": ...}` (for validation errors the app adds "Input validation error: ").
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


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


class SettingsError(LocalTGIError):
    """Raised when launcher flags are out of range or contradict each other or the model."""


class RequestBodyError(LocalTGIError):
    """Raised when a request body is too large, not JSON, or does not match the request type.

    TGI answers these with a plain-text body (axum's extractor rejections), not the JSON error shape.
    """

    error_type = "body"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class TemplateError(LocalTGIError):
    """Raised when the model's chat template cannot render the messages."""

    status = 422
    error_type = "template_error"


class RequestRejectedError(LocalTGIError):
    """Raised when an OpenAI-style request asks for something TGI refuses outright (`suffix`, too many
    prompts, tools); `error_type` is TGI's string for the case."""

    status = 422

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class NotReadyError(LocalTGIError):
    """Raised when a request arrives before the engine started or after it stopped."""

    status = 503
    error_type = "healthcheck"


def translate(exc: Exception) -> LocalTGIError:
    """The boundary for foreign exceptions escaping a request: ours pass through, anything else is
    logged with its traceback and becomes TGI's generation error."""
    if isinstance(exc, LocalTGIError):
        return exc
    log.exception("engine failure", exc_info=exc)
    return GenerationError(f"{type(exc).__name__}: {exc}")
