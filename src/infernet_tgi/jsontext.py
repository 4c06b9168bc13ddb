"""Untrusted JSON text: parsed with bounds on nesting and size, strings checked for lone surrogates.

Use `loads` instead of `json.loads` on anything a job or an upstream controls (the request body,
on-chain parametersJson, a constrained answer), and `lone_surrogate` / `scrub` on text that leaves
the container. Python's `json` recurses once per nesting level and raises RecursionError about 1,000
levels down (and jsonschema and pydantic recurse further on what it returns), so the depth is bounded
*before* parsing by one linear scan, in steps short enough to let the event loop run when callers put
large inputs in a worker thread; the same scan bounds the number of values, because `json.loads`
holds the GIL from start to end. `json` also turns `"\\ud800"` into a lone UTF-16 surrogate, which no
UTF-8 encoder accepts later (a response body, an ABI string, the upstream request); such strings are
refused here with the place they occur.
"""

from __future__ import annotations

import json
import operator
import re
from itertools import accumulate, count
from typing import Any

import msgspec

# A JSON string literal, or a run of text outside strings. The string runs to its closing quote or,
# unterminated, to the end of the text (json.loads refuses such a text later): a match that starts
# at a quote never fails, so it is never tried again from the next quote. (Failing there made the
# scan quadratic: `"` and `\\"` * 40,000 took 28 s.)
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[^"]+', re.DOTALL)
# Openers as 2 and closers as 0, everything else deleted: the running sum over the first i steps,
# started at depth d, is then d + (depth change) + i.
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_NOT_A_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
# Brackets summed per C-level call. The calls hold the GIL, so they stay short (~1 ms): this runs in
# a worker thread, and the event loop gets the GIL back between them.
_CHUNK = 8 * 1024
_SURROGATE = re.compile("[\ud800-\udfff]")
_FAST = msgspec.json.Decoder()
# Values in one JSON text: far above any job (a JSON schema has at most 2,000), low enough that
# parsing takes a few milliseconds.
MAX_VALUES = 20_000


def nesting_depth(text: str) -> int:
    """How deep the brackets of JSON `text` nest (strings ignored); linear in `len(text)`."""
    return shape(text)[0]


def shape(text: str) -> tuple[int, int]:
    """How deep the brackets of JSON `text` nest, and how many commas separate its values (both
    outside strings); linear in `len(text)`."""
    depth = deepest = commas = 0
    for token in _TOKENS.finditer(text):
        run = token.group()
        if run[0] == '"':
            continue
        commas += run.count(",")
        steps = run.encode().translate(_DEPTH_STEP, _NOT_A_BRACKET)
        for start in range(0, len(steps), _CHUNK):
            chunk = steps[start : start + _CHUNK]
            depths = list(map(operator.sub, accumulate(chunk, initial=depth), count()))
            deepest = max(deepest, max(depths))
            depth = depths[-1]
    return deepest, commas


def loads(raw: str | bytes, *, max_depth: int, max_values: int = MAX_VALUES) -> Any:
    """`raw` parsed as JSON; `ValueError` saying what is wrong when it is not UTF-8, not JSON, nested
    deeper than `max_depth`, has more than about `max_values` values (counted by the commas between
    them: json.loads holds the GIL throughout, ~50 ms per 100,000 values), or holds a lone
    surrogate. `NaN`, `Infinity` and numbers too large for
    a float (`1e999`) parse as Python's non-finite floats: the typed layer above refuses them where
    a number matters, with the parameter's name."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})") from exc
    else:
        text = raw
    # Fast path: counted in strings too, fewer openers and commas than the limits prove the shape.
    if text.count("[") + text.count("{") > max_depth or text.count(",") >= max_values:
        depth, commas = shape(text)
        if depth > max_depth:
            raise ValueError(f"nested {depth} levels deep; at most {max_depth} are accepted")
        if commas >= max_values:
            raise ValueError(f"holds more than {max_values} values; at most {max_values} are accepted")
    value = json.loads(text)
    # A lone surrogate can only come from a \u escape: strict UTF-8 decoding refuses encoded ones,
    # so bytes without an escape need no walk over the parsed value (text given as str might hold one).
    if "\\u" not in text and (isinstance(raw, bytes) or not _SURROGATE.search(text)):
        return value
    where = lone_surrogate(value)
    if where is not None:
        raise ValueError(f"a string at {where} holds a lone UTF-16 surrogate (not encodable as UTF-8)")
    return value


def parse(raw: bytes) -> Any:
    """`json.loads(raw)` (the same value, the same errors), four times cheaper for UTF-8 JSON: use
    it on upstream answers and stream events, where it runs once per token.

    msgspec's decoder builds the same values as `json` for every text both accept (ints of any size,
    correctly rounded floats, the last of duplicate keys); what it refuses (not UTF-8, a byte-order
    mark, NaN, 1e999, lone surrogates) goes to `json.loads`, which accepts some of it and otherwise
    raises its own error."""
    try:
        return _FAST.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return json.loads(raw)


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
