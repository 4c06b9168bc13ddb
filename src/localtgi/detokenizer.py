"""Incremental decoding of generated tokens into text pieces, as a stream needs them.

Use one `Detokenizer` per generation and `push` each non-special token: it returns the new text,
or "" while a UTF-8 character split across byte tokens is incomplete (`flush` on the last token
gives up waiting). Concatenated pieces equal the decoded text. This is TGI's prefix/read-offset
scheme: each step decodes a short window, never the whole output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Detokenizer:
    """Incremental decoding that holds back text while a UTF-8 character is incomplete."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int]) -> None:
        self._tok = tokenizer
        # A few prompt tokens give context, so tokenizers that drop a leading space decode right.
        self._ids = list(prompt_ids[-4:])
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int, *, flush: bool = False) -> str:
        self._ids.append(token_id)
        before = self._tok.decode(self._ids[self._prefix : self._read])
        after = self._tok.decode(self._ids[self._prefix :])
        if len(after) > len(before) and (flush or not after.endswith("\ufffd")):
            self._prefix, self._read = self._read, len(self._ids)
            return str(after[len(before) :])
        return ""
