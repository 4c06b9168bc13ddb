"""Constrained output: a job's `response_pool`, `json_format` or TGI `grammar`, per protocol.

Use `Constraint.from_parameters` once per job (jobs does), `constraint_of` to read a request's
constraint (also a raw TGI `grammar` given through the workflow API), the translators in the upstream
clients, and `check` on every answer before it leaves the container: an upstream that ignored the
constraint (vLLM >= 0.12 drops `guided_*` silently, Vast's worker forwards only `max_new_tokens`) gives
a `ConstraintViolationError`, never unconstrained text.

    response_pool      -> TGI regex `(a|b)`      vLLM choice          TGI chat response_format regex
    json_format        -> TGI json <schema>      vLLM json <schema>   TGI chat response_format json
    grammar (regex)    -> TGI regex              vLLM regex           TGI chat response_format regex
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from . import jsontext
from .errors import ConstraintViolationError, ParameterError
from .protocol import TGI_PREFIX
from .schemas import answer_schema_error, checked_regex, checked_schema, regex_fullmatch

if TYPE_CHECKING:  # generation.py imports Constraint from here
    from .generation import GenerationRequest

Kind = Literal["choice", "json", "regex"]
_SIMPLE_TYPES = ("string", "integer", "boolean", "number")
# Characters with a meaning in the regex dialects of TGI (outlines, llguidance) and Python.
_META = set("\\.^$|?*+()[]{}")
# A JSON answer nested deeper than this is refused before parsing (see jsontext).
MAX_ANSWER_DEPTH = 64


@dataclass(frozen=True)
class Constraint:
    """What the answer must be: one of `choices`, JSON matching `schema`, or a `pattern` match."""

    kind: Kind
    choices: tuple[str, ...] = ()
    schema: dict[str, Any] | None = None
    pattern: str | None = None

    @classmethod
    def from_parameters(
        cls,
        *,
        response_pool: list[str] | None = None,
        json_format: dict[str, Any] | None = None,
        json_format_is_json_schema: bool | None = None,
        grammar: dict[str, Any] | None = None,
    ) -> Constraint | None:
        """The job's constraint, or None; raises `ParameterError` for contradicting or bad ones."""
        given = [
            name
            for name, value in (
                ("response_pool", response_pool),
                ("json_format", json_format),
                ("grammar", grammar),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise ParameterError(
                f"{TGI_PREFIX}{' and '.join(f'`{n}`' for n in given)} are incompatible: give one"
            )
        if json_format_is_json_schema and json_format is None:
            raise ParameterError(f"{TGI_PREFIX}`json_format_is_json_schema` needs `json_format`")
        if response_pool is not None:
            if not response_pool:
                raise ParameterError(f"{TGI_PREFIX}`response_pool` must not be empty")
            return cls("choice", choices=tuple(dict.fromkeys(response_pool)))
        if json_format is not None:
            schema = json_format if json_format_is_json_schema else simple_json_schema(json_format)
            return cls("json", schema=checked_schema(schema, "json_format"))
        if grammar is not None:
            return from_grammar(grammar)
        return None

    def describe(self) -> str:
        if self.kind == "choice":
            return f"one of {list(self.choices)}"
        if self.kind == "json":
            return "JSON matching the job's schema"
        return f"a match of the regex {self.pattern!r}"


def constraint_of(request: GenerationRequest) -> Constraint | None:
    """The request's constraint, also when it came as a raw TGI `grammar` parameter (workflow API)."""
    if request.constraint is not None:
        return request.constraint
    grammar = request.parameters.get("grammar")
    if isinstance(grammar, dict):
        return from_grammar(grammar)
    return None


def from_grammar(grammar: dict[str, Any]) -> Constraint:
    """TGI's `grammar` object (`json`/`json_object`/`json_schema`/`regex`) as a constraint."""
    kind, value = grammar.get("type"), grammar.get("value")
    if kind == "regex":
        if not isinstance(value, str) or not value:
            raise ParameterError(f"{TGI_PREFIX}a regex `grammar` needs a non-empty string value")
        return Constraint("regex", pattern=checked_regex(value, "`grammar`"))
    if kind == "json_schema":
        if not isinstance(value, dict) or not isinstance(value.get("schema"), dict):
            raise ParameterError(f'{TGI_PREFIX}a json_schema `grammar` needs {{"schema": {{...}}}}')
        return Constraint("json", schema=checked_schema(value["schema"], "grammar"))
    if kind in ("json", "json_object"):
        if isinstance(value, str):
            try:
                value = jsontext.loads(value, max_depth=MAX_ANSWER_DEPTH)
            except ValueError as exc:
                raise ParameterError(f"{TGI_PREFIX}`grammar` value is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ParameterError(f"{TGI_PREFIX}a json `grammar` needs a JSON schema object")
        return Constraint("json", schema=checked_schema(value, "grammar"))
    raise ParameterError(f"{TGI_PREFIX}unknown `grammar` type {kind!r}")


def simple_json_schema(fields: dict[str, Any]) -> dict[str, Any]:
    """happy_vllm's "simple json" (`{"name": "string", "ages": ["integer"]}`) as a JSON schema in
    which every key is required; nested objects are allowed as an extension."""

    def of(value: Any, where: str) -> dict[str, Any]:
        if isinstance(value, str) and value in _SIMPLE_TYPES:
            return {"type": value}
        if isinstance(value, list) and len(value) == 1:
            return {"type": "array", "items": of(value[0], where + "[]")}
        if isinstance(value, dict) and value:
            return {
                "type": "object",
                "properties": {k: of(v, f"{where}.{k}") for k, v in value.items()},
                "required": list(value),
                "additionalProperties": False,
            }
        raise ParameterError(
            f"{TGI_PREFIX}`json_format` field `{where}` must be one of {list(_SIMPLE_TYPES)}, "
            f"a one-item list of one, or an object (set json_format_is_json_schema for a JSON schema)"
        )

    if not fields:
        raise ParameterError(f"{TGI_PREFIX}`json_format` must name at least one field")
    return of(fields, "json_format")


def choice_regex(choices: tuple[str, ...]) -> str:
    """An alternation matching exactly one of `choices`, escaped for TGI's and Python's regexes."""
    return "(" + "|".join("".join("\\" + c if c in _META else c for c in s) for s in choices) + ")"


def tgi_grammar(constraint: Constraint) -> dict[str, Any]:
    """TGI's `grammar` parameter (also localtgi's, DataCrunch's and TGI chat's `response_format`)."""
    if constraint.kind == "json":
        return {"type": "json", "value": constraint.schema}
    if constraint.kind == "choice":
        return {"type": "regex", "value": choice_regex(constraint.choices)}
    return {"type": "regex", "value": constraint.pattern}


def vllm_fields(constraint: Constraint, form: Literal["structured_outputs", "guided"]) -> dict[str, Any]:
    """vLLM's request keys: `structured_outputs` from 0.12, `guided_*` up to 0.11 (ignored later)."""
    key, value = {
        "choice": ("choice", list(constraint.choices)),
        "json": ("json", constraint.schema),
        "regex": ("regex", constraint.pattern),
    }[constraint.kind]
    if form == "guided":
        return {f"guided_{key}": value}
    return {"structured_outputs": {key: value}}


async def verify(
    constraint: Constraint, text: str, *, finish_reason: str | None, where: str, executor: Executor
) -> str:
    """`check`, run in `executor` when it parses or matches (JSON and regex constraints): RE2 and the
    schema check's step budget bound it, but it is CPU work proportional to the answer, so it stays
    off the event loop. Give a one-thread executor: each busy thread takes a share of the GIL from
    the event loop, so hostile jobs checked in parallel would slow every other request."""
    if constraint.kind == "choice":
        return check(constraint, text, finish_reason=finish_reason, where=where)
    run = functools.partial(check, constraint, text, finish_reason=finish_reason, where=where)
    return await asyncio.get_running_loop().run_in_executor(executor, run)


def check(constraint: Constraint, text: str, *, finish_reason: str | None, where: str) -> str:
    """The answer when it keeps the constraint (a pool answer with stray whitespace is trimmed);
    else `ConstraintViolationError` saying why. Prefer `verify` on the event loop."""
    if jsontext.has_lone_surrogate(text):
        return _violated(constraint, text, False, where, "it holds a lone UTF-16 surrogate")
    if constraint.kind == "choice":
        for candidate in (text, text.strip()):
            if candidate in constraint.choices:
                return candidate
        cut = finish_reason == "length" and any(c.startswith(text) for c in constraint.choices)
        return _violated(constraint, text, cut, where, "it is not in the pool")
    if constraint.kind == "json":
        try:
            value = jsontext.loads(text, max_depth=MAX_ANSWER_DEPTH)
        except ValueError as exc:
            cut = finish_reason == "length"
            return _violated(constraint, text, cut, where, f"it is not JSON ({exc})")
        error = answer_schema_error(constraint.schema or {}, value)
        if error is not None:
            return _violated(constraint, text, False, where, error)
        return text
    if regex_fullmatch(constraint.pattern or "", text):
        return text
    return _violated(constraint, text, finish_reason == "length", where, "it does not match")


def _violated(constraint: Constraint, text: str, cut: bool, where: str, why: str) -> str:
    snippet = text if len(text) <= 120 else text[:117] + "..."
    if cut:
        hint = "the answer was cut at max_new_tokens (finish_reason length); allow more tokens"
    else:
        hint = "the upstream ignored the constraint"
    raise ConstraintViolationError(
        f"answer from {where} must be {constraint.describe()}, but {why}: {snippet!r} ({hint})"
    )
