"""Upstream clients, one per protocol, behind the `Upstream` protocol; `build_upstream` picks one."""

from .base import Upstream
from .client import HTTPClient
from .factory import build_member, build_upstream
from .guard import Guard
from .native import NativeTGI
from .openai import OpenAIUpstream
from .pool import UpstreamPool
from .runpod import RunPodUpstream
from .tgi import TGIUpstream
from .vast import VastUpstream

__all__ = [
    "Guard",
    "HTTPClient",
    "NativeTGI",
    "OpenAIUpstream",
    "RunPodUpstream",
    "TGIUpstream",
    "Upstream",
    "UpstreamPool",
    "VastUpstream",
    "build_member",
    "build_upstream",
]
