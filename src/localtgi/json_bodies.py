"""Request bodies read as JSON the way TGI's parser (serde_json) reads them.

Use `read` on every request body before validating it. Python's `json` is laxer than serde_json in
three ways a stranger can exploit: it reads `NaN` and `Infinity` (numbers no JSON has, which then
fail deep inside sampling), it turns a `\\u` escape of half a surrogate pair into a string that no
UTF-8 encoder (the tokenizer's included) accepts, and it recurses once per nesting level in C,
so a deep enough body exhausts the stack whatever the recursion limit. `read` refuses all three
as serde_json does (TGI answers them with a 400), bounding the nesting to serde_json's 128 levels
before parsing, with one linear scan.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

MAX_DEPTH = 128  # serde_json's recursion limit
# A JSON string literal, to its closing quote or, unterminated, to the end of the body (json then
# refuses the body): a match that starts at a quote never fails, so the scan stays linear.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_OPEN = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSE = np.frombuffer(b"]}", dtype=np.uint8)


def deeper_than(text: bytes, limit: int) -> bool:
    """Whether the brackets of JSON `text` nest more than `limit` levels, strings ignored; linear
    in its length (a text with too few openers to go that deep is not scanned)."""
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    outside = np.frombuffer(_STRING.sub(b"", text), dtype=np.uint8)
    steps = np.isin(outside, _OPEN).astype(np.int32) - np.isin(outside, _CLOSE).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0)) > limit


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def read(body: bytes) -> Any:
    """The JSON value of `body`; ValueError saying what is wrong where serde_json would refuse it."""
    try:
        text = body.decode("utf-8")  # strict: json.loads would let encoded surrogates through
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid UTF-8 at byte {exc.start}") from None
    if deeper_than(body, MAX_DEPTH):
        raise ValueError("recursion limit exceeded")
    value = json.loads(text, parse_constant=_not_json)
    # Python reads a lone surrogate escape into a str no UTF-8 text can hold; only an escape makes one.
    if b"\\u" in body:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("lone surrogate in a \\u escape") from None
    return value
