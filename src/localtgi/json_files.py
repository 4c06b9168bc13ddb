"""The small JSON files a model directory holds (config, generation config, tokenizer config).

Use `read_object(path)` for each: the JSON object it holds, None when there is no such file, and a
`ModelLoadError` naming the file when it cannot be read or holds something else.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from localtgi.errors import ModelLoadError


def read_object(path: pathlib.Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when the file does not exist."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data
