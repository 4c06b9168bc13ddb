"""DataCrunch's LLM endpoints: TGI's generate protocol plus a required `model`, on its own paths.

Use `datacrunch_upstream` with the endpoint's base URL (`https://inference.datacrunch.io`) and the
model name; the API key goes in `Authorization: Bearer` (the shared client's headers). DataCrunch has
no chat route, so chat jobs need `TGI_INF_CHAT_TEMPLATE`; constraints go as TGI's `grammar`.
"""

from __future__ import annotations

from .client import HTTPClient
from .native import NativeTGI

GENERATE_PATH = "/v1/completions/generate"
STREAM_PATH = "/v1/completions/generate_stream"


def datacrunch_upstream(client: HTTPClient, url: str, model: str) -> NativeTGI:
    """A DataCrunch endpoint at `url` serving `model`."""
    return NativeTGI(
        client,
        url,
        generate_path=GENERATE_PATH,
        stream_path=STREAM_PATH,
        extra_body={"model": model},
        chat_route=False,
        health_path=None,
    )
