"""Untrusted JSON text: parsed with a nesting bound, and strings checked for lone surrogates.

Use `loads` instead of `json.loads` on anything a job or an upstream controls (the request body,
on-chain parametersJson, a constrained answer), and `lone_surrogate` / `scrub` on text that leaves
the container. Python's `json` recurses once per nesting level and raises RecursionError about 1,000
levels down (and jsonschema and pydantic recurse further on what it returns), so the depth is bounded
*before* parsing by one linear scan (about 0.2 s for a 1 MiB body of brackets: callers run large
inputs off the event loop). `json` also turns `"\\ud800"` into a lone UTF-16 surrogate, which
no UTF-8 encoder accepts later (a response body, an ABI string, the upstream request); such strings
are refused here with the place they occur.
"""

from __future__ import annotations

import json
import operator
import re
from itertools import accumulate
from typing import Any

# A JSON string literal (unrolled loop: linear, no backtracking), or a run of anything that is
# neither a bracket nor a quote. Removing both leaves only the brackets outside strings.
_NOT_BRACKETS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[^\[\]{}"]+', re.DOTALL)
# Openers as 2 and closers as 0: the running sum of the first i+1 steps is then depth + i + 1.
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_SURROGATE = re.compile("[\ud800-\udfff]")


def nesting_depth(text: str) -> int:
    """How deep the brackets of JSON `text` nest (strings ignored); linear in `len(text)`."""
    brackets = _NOT_BRACKETS.sub("", text)
    openers = brackets.count("[") + brackets.count("{")
    if openers <= 1:
        return openers
    steps = brackets.encode().translate(_DEPTH_STEP)
    # C-level iterators only (about 0.2 us a bracket): no Python code runs per character.
    depth: int = max(map(operator.sub, accumulate(steps), range(1, len(steps) + 1)))
    return depth


def loads(raw: str | bytes, *, max_depth: int) -> Any:
    """`raw` parsed as JSON; `ValueError` saying what is wrong when it is not UTF-8, not JSON, nested
    deeper than `max_depth`, or holds a lone surrogate. `NaN`, `Infinity` and numbers too large for
    a float (`1e999`) parse as Python's non-finite floats: the typed layer above refuses them where
    a number matters, with the parameter's name."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})") from exc
    else:
        text = raw
    depth = nesting_depth(text)
    if depth > max_depth:
        raise ValueError(f"nested {depth} levels deep; at most {max_depth} are accepted")
    value = json.loads(text)
    where = lone_surrogate(value)
    if where is not None:
        raise ValueError(f"a string at {where} holds a lone UTF-16 surrogate (not encodable as UTF-8)")
    return value


def lone_surrogate(value: Any) -> str | None:
    """The path (`data.text`, `messages[0].content`, `key "..."`) of the first string in `value`
    holding a lone surrogate, or None. Iterative, so it needs no recursion bound of its own."""
    stack: list[tuple[Any, str]] = [(value, "the top level")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                if _SURROGATE.search(key):
                    return f"a key in {path}"
                stack.append((child, key if path == "the top level" else f"{path}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
    return None


def has_lone_surrogate(text: str) -> bool:
    """True when `text` cannot be encoded as UTF-8 because of a lone surrogate."""
    return _SURROGATE.search(text) is not None


def scrub(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD, so that it encodes as UTF-8."""
    return _SURROGATE.sub("\ufffd", text)
