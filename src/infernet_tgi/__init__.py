"""Infernet LLM inference container: TGI and OpenAI-compatible backends behind `POST /service_output`."""

__version__ = "0.1.0"

from .app import create_app
from .config import Settings
from .errors import InfernetTGIError
from .retry import RetryParams, RetryPolicy
from .workflow import TGIClientInferenceWorkflow, TgiInferenceRequest

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
