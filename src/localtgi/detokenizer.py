"""Incremental decoding of generated tokens into text pieces, as a stream needs them.

Use one `Detokenizer` per generation and `push` each non-special token: it returns the new text,
or "" while a UTF-8 character split across byte tokens is incomplete (`flush` on the last token
gives up waiting and decodes what is held back). Concatenated pieces equal the decoded text. The
work is done by `tokenizers.decoders.DecodeStream` (Rust), primed with the prompt's last tokens so
that tokenizers which treat a leading space specially decode the first piece right.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers.decoders import DecodeStream

from localtgi.tokenizer import Tokenizer


class Detokenizer:
    """Incremental decoding that holds back text while a UTF-8 character is incomplete."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int]) -> None:
        self._tok = tokenizer
        self._backend = tokenizer.backend_tokenizer
        self._stream = DecodeStream(skip_special_tokens=False)
        context = [int(i) for i in prompt_ids[-4:]]
        # The prompt's own text is not ours to emit; a prompt that ends inside a character (only
        # possible with hand-made ids) would make the stream hold it back, so then go without.
        if context and self._stream.step(self._backend, context) is None:
            self._stream = DecodeStream(skip_special_tokens=False)
        self._held: list[int] = []

    def push(self, token_id: int, *, flush: bool = False) -> str:
        piece = self._stream.step(self._backend, token_id)
        if piece is not None:
            self._held.clear()
            return str(piece)
        self._held.append(token_id)
        if flush:
            return self._tok.decode(self._held)
        return ""
