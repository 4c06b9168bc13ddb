"""Helpers shared by the container tests: env builders and a recording sleep."""

from __future__ import annotations

import json
from typing import Any


class Waits(list[float]):
    """An injected sleep that records the waits instead of sleeping."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def env_for(url: str, **extra: Any) -> dict[str, str]:
    env = {
        "TGI_INF_WORKFLOW_POSITIONAL_ARGS": json.dumps([url, 2]),
        "TGI_INF_WORKFLOW_KW_ARGS": json.dumps(
            {"retry_params": {"tries": 3, "delay": 1, "backoff": 2, "jitter": 0}, "max_new_tokens": 16}
        ),
    }
    env.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return env
