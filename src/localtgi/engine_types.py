"""Value types shared by the engine and the HTTP layer of localtgi.

Use these to hand a tokenized, validated request to the engine (`SamplingParams`) and to read what it
produces (`TokenEvent`s, the last one carrying a `FinishEvent`). They carry no torch objects, so the
HTTP layer can build and read them without touching the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["length", "eos_token", "stop_sequence"]


@dataclass(frozen=True)
class GrammarSpec:
    """A validated output constraint. `kind` is normalised: TGI's `json_object` arrives as `json`.

    `value` is a JSON-schema dict for `json` and `json_schema` (for `json_schema` the inner `schema`
    already unwrapped), or a regular expression string for `regex`.
    """

    kind: Literal["json", "regex"]
    value: Any


@dataclass(frozen=True)
class SamplingParams:
    """Everything that decides which token comes next, already validated with TGI's rules."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    watermark: bool = False
    max_new_tokens: int = 20
    stop: tuple[str, ...] = ()
    top_n_tokens: int = 0
    grammar: GrammarSpec | None = None


@dataclass(frozen=True)
class TopToken:
    id: int
    text: str
    logprob: float
    special: bool


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. `text` is this token's share of the decoded output (it may be "" while a
    multi-byte UTF-8 character is incomplete); concatenating the `text` of non-special tokens gives the
    generated text."""

    index: int  # 1-based
    id: int
    text: str
    logprob: float
    special: bool
    top_tokens: tuple[TopToken, ...] = field(default_factory=tuple)
    finish: FinishEvent | None = None  # set on the last token of the generation only


@dataclass(frozen=True)
class FinishEvent:
    """How a generation ended; carried by its last `TokenEvent`."""

    finish_reason: FinishReason
    generated_text: str  # all non-special generated text; a matched stop sequence is kept
    generated_tokens: int
    seed: int | None  # the seed actually used when sampling, None for greedy decoding


@dataclass(frozen=True)
class PrefillToken:
    id: int
    text: str
    logprob: float | None  # None for the first prompt token
