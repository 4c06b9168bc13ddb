"""Constrained decoding with llguidance: a `GrammarSpec` becomes a per-request token mask.

Use one `GrammarCompiler` per engine (building its llguidance tokenizer takes up to a second for a
50k vocabulary, so do it once, off the event loop). `compile` then turns a spec into a fresh
`GrammarMatcher` in milliseconds (call it off the event loop and off the model thread: a large or
hostile grammar takes longer); the engine asks the matcher for the allowed tokens before each
step and feeds it the chosen token after. When the grammar is complete, only eos tokens are allowed,
so a constrained generation ends with `eos_token` (or `length` if `max_new_tokens` runs out first).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from localtgi.engine_types import GrammarSpec
from localtgi.errors import GrammarError
from localtgi.tokenizer import Tokenizer


class GrammarMatcher:
    """The grammar state of one generation."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size
        # The first mask is the expensive one (llguidance builds its lexer lazily): computed where
        # the grammar is compiled, off the model thread, and handed to the first `allowed`.
        self._first: bytes | None = matcher.compute_bitmask()

    def allowed(self) -> npt.NDArray[np.bool_]:
        """Bool mask over the model's vocabulary of the tokens the grammar allows next."""
        first, self._first = self._first, None
        packed = np.frombuffer(first or self._matcher.compute_bitmask(), dtype=np.uint8)
        bits = np.unpackbits(packed, bitorder="little")
        mask = np.zeros(self._vocab_size, dtype=bool)
        n = min(self._vocab_size, bits.size)
        mask[:n] = bits[:n].astype(bool)
        return mask

    def consume(self, token_id: int) -> None:
        """Advance over the chosen token; a token outside the mask is a bug, reported loudly."""
        if not self._matcher.consume_token(token_id):
            raise GrammarError(f"grammar rejected token {token_id}: {self._matcher.get_error()}")

    @property
    def is_stopped(self) -> bool:
        return bool(self._matcher.is_stopped())

    @property
    def is_accepting(self) -> bool:
        return bool(self._matcher.is_accepting())


_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def closed_objects(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` where every object with `properties` and no `additionalProperties` gets
    `additionalProperties: false`.

    TGI's JSON grammars (outlines) only ever generate the declared keys; llguidance would also allow
    others, and a small model then wanders off into endless made-up keys. Iterative: schemas come
    from requests (their depth is bounded by validation, but no recursion here either way).
    """
    root = dict(schema)
    stack = [root]
    while stack:
        node = stack.pop()
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for key in _SUBSCHEMA_MAPS:
            children = node.get(key)
            if isinstance(children, dict):
                copied = {k: dict(v) if isinstance(v, dict) else v for k, v in children.items()}
                node[key] = copied
                stack.extend(v for v in copied.values() if isinstance(v, dict))
        for key in _SUBSCHEMA_LISTS:
            children = node.get(key)
            if isinstance(children, list):
                copied_list = [dict(v) if isinstance(v, dict) else v for v in children]
                node[key] = copied_list
                stack.extend(v for v in copied_list if isinstance(v, dict))
        for key in ("items", "additionalProperties", "not", "if", "then", "else", "contains"):
            child = node.get(key)
            if isinstance(child, dict):
                node[key] = dict(child)
                stack.append(node[key])
    return root


class GrammarCompiler:
    """Compiles TGI grammars for one tokenizer.

    A grammar is written by whoever sends the request, so llguidance runs with tighter limits
    than its defaults (`LEXER_FUEL`, `LEXER_STATES`): its lexer's budget per mask (about 7 ms of
    work where the default allows 14), its states (about 20-40 MB a request where the default
    allows 250-500 MB), and errors that do not echo the grammar and parser state back. Measured
    on SmolLM2's vocabulary: `x{1000}{1000}` cost 1.3-2.1 s before its first mask and now 0.1 s,
    and fails at its first token; JSON schemas, e-mail and date patterns and 10,000-character
    regexes are unaffected."""

    LEXER_FUEL = 100_000  # llguidance's units: about 50 (initial) or 14 (per mask) a microsecond
    LEXER_STATES = 20_000

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: Iterable[int]) -> None:
        import llguidance

        self._ll = llguidance
        self._vocab_size = vocab_size
        eos = sorted(eos_token_ids)
        # From the tokenizer.json text, as llguidance.hf does it, without its transformers import.
        self._lltok = llguidance.LLTokenizer(tokenizer.to_json(), n_vocab=vocab_size, eos_token=eos)
        self._limits = llguidance.LLParserLimits(
            initial_lexer_fuel=self.LEXER_FUEL,
            step_lexer_fuel=self.LEXER_FUEL,
            max_lexer_states=self.LEXER_STATES,
            verbose_errors=False,
        )

    def compile(self, spec: GrammarSpec) -> GrammarMatcher:
        """Build a matcher for `spec`; raises GrammarError when it is not a usable grammar."""
        ll = self._ll
        try:
            if spec.kind == "json":
                schema = spec.value
                if isinstance(schema, str):
                    schema = json.loads(schema)
                if not isinstance(schema, dict):
                    raise GrammarError("a json grammar needs a JSON schema object")
                if not schema:
                    schema = {"type": "object"}  # TGI: `{}` means any JSON object
                schema = closed_objects(schema)
                grammar = ll.LLMatcher.grammar_from_json_schema(
                    schema, defaults={"whitespace_flexible": False, "lenient": True}
                )
            elif spec.kind == "regex":
                if not isinstance(spec.value, str):
                    raise GrammarError("a regex grammar needs a string")
                grammar = ll.LLMatcher.grammar_from_regex(spec.value)
            else:
                raise GrammarError(f"unknown grammar type {spec.kind!r}")
        except GrammarError:
            raise
        except (ValueError, TypeError) as exc:
            raise GrammarError(f"invalid grammar: {exc}") from exc
        except RecursionError:
            raise GrammarError("invalid grammar: nested too deeply") from None
        matcher = ll.LLMatcher(self._lltok, grammar, log_level=0, limits=self._limits)
        compiled = GrammarMatcher(matcher, self._vocab_size)
        if matcher.is_error():
            raise GrammarError(f"invalid grammar: {matcher.get_error()}")
        return compiled
