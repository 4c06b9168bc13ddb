"""TGI's request validation: its rules, in its order, with its exact messages.

Use `Validator.validate` (blocking: it tokenizes; call it off the event loop) to turn `inputs` plus
`GenerateParameters` into a `ValidRequest` holding the engine's `SamplingParams`. Failures raise
`ValidationError` whose message is TGI's text without the "Input validation error: " prefix (the app adds
it). Checks that TGI makes outside `validate` (best_of limits, stream-only rules) are separate functions
so routes can run them at the point TGI does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema

from localtgi import json_bodies
from localtgi.engine_types import GrammarSpec, SamplingParams
from localtgi.errors import ValidationError
from localtgi.protocol import GenerateParameters, JsonGrammar, JsonSchemaGrammar, RegexGrammar
from localtgi.settings import Limits

# A null max_new_tokens is produced in slices of this size; only the first slice must fit up front.
MAX_NEW_TOKENS_SLICE = 1024

Tokenize = Callable[[str, bool], Sequence[int]]


@dataclass(frozen=True)
class ValidRequest:
    """A request that passed validation: what the engine needs plus what the response needs."""

    inputs: str
    input_ids: tuple[int, ...]
    params: SamplingParams
    details: bool
    decoder_input_details: bool
    return_full_text: bool

    @property
    def input_length(self) -> int:
        return len(self.input_ids)


def check_best_of(best_of: int | None, limits: Limits) -> int:
    """TGI's `validate_best_of`, run before a non-streaming request takes its permits."""
    value = 1 if best_of is None else best_of
    if limits.max_best_of == 1 and value != 1:
        raise ValidationError("`best_of` != 1 is not allowed for this endpoint")
    if value > limits.max_best_of:
        raise ValidationError(f"`best_of` must be > 0 and <= {limits.max_best_of}. Given: {value}")
    return max(value, 1)


def check_stream(parameters: GenerateParameters) -> None:
    """Rules TGI applies to streaming requests before they take a permit."""
    if (parameters.best_of or 1) != 1:
        raise ValidationError("`best_of` != 1 is not supported when streaming tokens")
    if parameters.decoder_input_details:
        raise ValidationError("`decoder_input_details` == true is not supported when streaming tokens")


# Deeper schemas are refused before any recursive code (json, jsonschema, llguidance) sees them:
# at ~200 levels they exhaust Python's recursion limit or llguidance's own.
MAX_SCHEMA_DEPTH = 64


def nesting_depth(value: Any) -> int:
    """Depth of nested dicts/lists in `value`, counted without recursion (hostile input)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _grammar(grammar: JsonGrammar | RegexGrammar | JsonSchemaGrammar) -> GrammarSpec:
    if isinstance(grammar, RegexGrammar):
        return GrammarSpec(kind="regex", value=grammar.value)
    schema: Any
    if isinstance(grammar, JsonSchemaGrammar):
        schema = grammar.value.schema_
    else:
        schema = grammar.value
    if isinstance(schema, str):
        # Bounded before parsing: json.loads recurses in C, once per level.
        if json_bodies.deeper_than(schema.encode("utf-8", "surrogatepass"), MAX_SCHEMA_DEPTH):
            raise ValidationError(f"grammar is not valid: nested deeper than {MAX_SCHEMA_DEPTH} levels")
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"grammar is not valid: {exc}") from None
    if not isinstance(schema, dict):
        raise ValidationError("grammar is not supported")
    if nesting_depth(schema) > MAX_SCHEMA_DEPTH:
        raise ValidationError(
            f"grammar is not valid: nested deeper than {MAX_SCHEMA_DEPTH} levels"
        ) from None
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValidationError(f"grammar is not valid: {exc.message}") from None
    if "properties" not in schema:
        raise ValidationError("grammar is not valid: Grammar must have a 'properties' field")
    return GrammarSpec(kind="json", value=schema)


class Validator:
    """Validates generation requests against one model's tokenizer and the launcher's limits."""

    def __init__(self, limits: Limits, tokenize: Tokenize) -> None:
        self.limits = limits
        self._tokenize = tokenize

    def validate(
        self,
        inputs: str,
        parameters: GenerateParameters,
        *,
        add_special_tokens: bool = True,
        return_full_text_default: bool = False,
    ) -> ValidRequest:
        """Run TGI's `Validation::validate` (blocking: tokenizes `inputs`)."""
        p = parameters
        limits = self.limits
        best_of = 1 if p.best_of is None else p.best_of
        # The router's check looks at which fields are set; the model server (below) at their values.
        router_sampling = (
            p.do_sample
            or p.temperature is not None
            or p.top_k is not None
            or p.top_p is not None
            or p.typical_p is not None
        )
        if best_of > 1 and not router_sampling:
            raise ValidationError("you must use sampling when `best_of` is > 1")
        temperature = 1.0 if p.temperature is None else p.temperature
        if temperature <= 0.0:
            raise ValidationError("`temperature` must be strictly positive")
        repetition_penalty = 1.0 if p.repetition_penalty is None else p.repetition_penalty
        if repetition_penalty <= 0.0:
            raise ValidationError("`repetition_penalty` must be strictly positive")
        frequency_penalty = 0.0 if p.frequency_penalty is None else p.frequency_penalty
        if not -2.0 <= frequency_penalty <= 2.0:
            raise ValidationError("`frequency_penalty` must be >= -2.0 and <= 2.0")
        top_p = 1.0
        if p.top_p is not None:
            if p.top_p <= 0.0 or p.top_p >= 1.0:
                raise ValidationError("`top_p` must be > 0.0 and < 1.0")
            top_p = p.top_p
        typical_p = 1.0
        if p.typical_p is not None:
            if p.typical_p <= 0.0 or p.typical_p >= 1.0:
                raise ValidationError("`typical_p` must be > 0.0 and < 1.0")
            typical_p = p.typical_p
        top_k = 0
        if p.top_k is not None:
            if p.top_k <= 0:
                raise ValidationError("`top_k` must be strictly positive")
            top_k = p.top_k
        if p.max_new_tokens == 0:
            raise ValidationError("`max_new_tokens` must be strictly positive")
        if len(p.stop) > limits.max_stop_sequences:
            raise ValidationError(
                f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(p.stop)}"
            )
        if p.seed is not None and best_of > 1:
            raise ValidationError("`seed` must not be set when `best_of` > 1")
        top_n_tokens = 0
        if p.top_n_tokens is not None:
            if p.top_n_tokens > limits.max_top_n_tokens:
                raise ValidationError(
                    f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {p.top_n_tokens}"
                )
            top_n_tokens = p.top_n_tokens
        if not inputs:
            raise ValidationError("`inputs` cannot be empty")
        if p.truncate is not None and (p.truncate == 0 or p.truncate > limits.max_input_tokens):
            raise ValidationError(
                "`truncate` must be strictly positive and less than "
                f"{limits.max_input_tokens}. Given: {p.truncate}"
            )

        input_ids = tuple(self._tokenize(inputs, add_special_tokens))
        if p.truncate is not None and len(input_ids) > p.truncate:
            input_ids = input_ids[-p.truncate :]  # TGI truncates on the left
        input_length = len(input_ids)
        room = max(limits.max_total_tokens - input_length, 0)
        if p.max_new_tokens is None:
            # Up to the total limit, produced in slices; only the first slice is checked (as TGI).
            total_new = room
            checked = min(room, MAX_NEW_TOKENS_SLICE)
        else:
            total_new = checked = p.max_new_tokens
        if input_length + checked > limits.max_total_tokens:
            raise ValidationError(
                f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
                f"Given: {input_length} `inputs` tokens and {checked} `max_new_tokens`"
            )
        if input_length > limits.max_input_tokens:
            raise ValidationError(
                f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {input_length}"
            )
        grammar = None if p.grammar is None else _grammar(p.grammar)

        # The model server samples when asked to, or when any warper changes the distribution.
        do_sample = p.do_sample or temperature != 1.0 or top_k != 0 or top_p < 1.0 or typical_p < 1.0
        params = SamplingParams(
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k or None,
            top_p=top_p if top_p < 1.0 else None,
            typical_p=typical_p if typical_p < 1.0 else None,
            repetition_penalty=repetition_penalty if repetition_penalty != 1.0 else None,
            frequency_penalty=frequency_penalty if frequency_penalty != 0.0 else None,
            seed=p.seed,
            watermark=p.watermark,
            max_new_tokens=total_new,
            stop=tuple(p.stop),
            top_n_tokens=top_n_tokens,
            grammar=grammar,
        )
        return_full_text = return_full_text_default if p.return_full_text is None else p.return_full_text
        return ValidRequest(
            inputs=inputs,
            input_ids=input_ids,
            params=params,
            details=p.details,
            decoder_input_details=p.decoder_input_details,
            return_full_text=return_full_text,
        )
