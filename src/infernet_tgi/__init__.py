"""Infernet LLM inference container: TGI and OpenAI-compatible backends behind `POST /service_output`.

The names below are re-exported lazily (PEP 562), so that importing one submodule, such as
`infernet_tgi.errors`, does not load the app, Quart and the HTTP stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "create_app": "app",
    "Settings": "config",
    "InfernetTGIError": "errors",
    "RetryParams": "retry",
    "RetryPolicy": "retry",
    "TGIClientInferenceWorkflow": "workflow",
    "TgiInferenceRequest": "workflow",
}

if TYPE_CHECKING:
    from .app import create_app
    from .config import Settings
    from .errors import InfernetTGIError
    from .retry import RetryParams, RetryPolicy
    from .workflow import TGIClientInferenceWorkflow, TgiInferenceRequest


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "InfernetTGIError",
    "RetryParams",
    "RetryPolicy",
    "Settings",
    "TGIClientInferenceWorkflow",
    "TgiInferenceRequest",
    "__version__",
    "create_app",
]
