"""Job JSON schemas and regexes: proven harmless before the engine is called, then used to check answers.

Use `checked_schema` and `checked_regex` on what a job sends (constraints does, while the job is
parsed), and `answer_schema_error` / `regex_fullmatch` on the answer. A job comes from an anonymous
stranger, so a schema or a regex is refused with a `ParameterError` (422) naming the problem when:

- a `$ref` is anything but a JSON pointer into the same schema (`#` or `#/...`): no URL, file,
  relative or anchor reference; `$dynamicRef`, `$recursiveRef` and an `$id` or `$schema` below the
  top level are refused as well (each could make jsonschema look elsewhere or switch to its stock
  validator, which uses Python's backtracking `re`). Checking never fetches anything: the
  `referencing.Registry` it resolves in has no way to retrieve a resource;
- `$ref`s and same-place applicators (`allOf`, `anyOf`, `oneOf`, `not`, `if`/`then`/`else`,
  `dependentSchemas`) form a cycle that never descends into the value, chain deeper than
  `MAX_REF_CHAIN`, or fan out to more than `MAX_EXPANSION` checks of one value;
- the schema nests deeper than `MAX_SCHEMA_DEPTH`, has more than `MAX_SCHEMA_NODES` values, holds a
  non-finite number, or `unevaluatedProperties` meets `patternProperties` (jsonschema would match
  those patterns with Python's `re`);
- a regex (`grammar` regex, `pattern`, a `patternProperties` key) is longer than `MAX_REGEX_CHARS`,
  RE2 cannot compile it (invalid, or backreferences and lookaround, which need backtracking), or its
  RE2 program is over `MAX_REGEX_PROGRAM` instructions (RE2 is linear in the text, but with a factor
  up to the program's size: `.{0,500}x` is 4,500 instructions and searches 8 KB in ~0.3 s).

Every regex from a job is matched by RE2 (`google-re2`), in time linear in the text. Schema checks run
in a jsonschema validator class built with `jsonschema.validators.extend`, whose `pattern`,
`patternProperties` and `additionalProperties` use RE2 and whose every keyword spends one step of a
per-check budget (`MAX_CHECK_STEPS`): a schema that multiplies work per nesting level of the answer
stops with a 422 instead of running for minutes. Callers run the answer check off the event loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote

import re2
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.validators import extend
from referencing import Registry
from referencing.exceptions import Unresolvable

from .errors import ParameterError
from .protocol import TGI_PREFIX

MAX_SCHEMA_DEPTH = 48  # JSON nesting of the schema document
MAX_SCHEMA_NODES = 2_000  # values in the schema document (checking its form: ~0.3 ms each)
MAX_REF_CHAIN = 32  # $ref / allOf / ... hops applied to one value
MAX_EXPANSION = 2_000  # subschemas applied to one value through those hops
MAX_REGEX_CHARS = 2_000
MAX_REGEX_PROGRAM = 2_000  # RE2 instructions: matching costs up to ~1 ns x this per character
MAX_REGEXES = 64  # distinct regexes in one schema
MAX_CHECK_STEPS = 20_000  # keyword evaluations for one answer (about 13 us each: ~0.25 s)
_YIELD_EVERY = 64  # keyword evaluations (about 1 ms) between GIL hand-overs
_RE2_MEMORY = 256 << 10  # bytes RE2 may use per regex (default 8 MiB): also bounds compile time
_CHARS_PER_STEP = 8  # a regex match spends one budget step per this many characters

_SAME_PLACE_LISTS = ("allOf", "anyOf", "oneOf")
_SAME_PLACE_ONE = ("not", "if", "then", "else")
_REF_KEYS = ("$dynamicRef", "$recursiveRef")
_ROOT = "the top level"


def _options() -> re2.Options:
    options = re2.Options()
    options.max_mem = _RE2_MEMORY
    options.log_errors = False  # RE2 would print every refused job regex on stderr
    options.never_capture = True  # only "does it match" is asked: lets RE2 use its DFA
    return options


def _compile(pattern: str) -> Any:
    return re2.compile(pattern, _options())


def checked_regex(pattern: str, where: str) -> str:
    """`pattern` when RE2 compiles it within the limits, else a 422 naming `where`."""
    if len(pattern) > MAX_REGEX_CHARS:
        raise ParameterError(
            f"{TGI_PREFIX}the regex in {where} is {len(pattern)} characters; at most {MAX_REGEX_CHARS}"
        )
    try:
        size = _compile(pattern).programsize
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ParameterError(
            f"{TGI_PREFIX}the regex {pattern!r} in {where} is not accepted: {reason} "
            "(regexes run on RE2: no backreferences, no lookaround, bounded size)"
        ) from exc
    if size > MAX_REGEX_PROGRAM:
        raise ParameterError(
            f"{TGI_PREFIX}the regex {pattern!r} in {where} is too complex: {size} RE2 instructions, "
            f"at most {MAX_REGEX_PROGRAM} (large counted repetitions such as `{{1,500}}` cost most)"
        )
    return pattern


def regex_fullmatch(pattern: str, text: str) -> bool:
    """Whether all of `text` matches `pattern` (a `checked_regex`), in time linear in `len(text)`."""
    return _compile(pattern).fullmatch(text) is not None


def checked_schema(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """`schema` when it is a valid draft 2020-12 JSON schema that is safe to check answers with
    (see the module docstring); else a 422 naming the parameter `name` and the problem."""
    _Walk(schema, name).run()
    try:
        Draft202012Validator.check_schema(_local(schema), format_checker=None)
    except SchemaError as exc:
        raise ParameterError(f"{TGI_PREFIX}`{name}` is not a valid JSON schema: {exc.message}") from exc
    return schema


def answer_schema_error(schema: dict[str, Any], value: Any) -> str | None:
    """Why `value` does not match `schema` (a `checked_schema`), or None when it does. A 422
    `ParameterError` when checking would cost more than `MAX_CHECK_STEPS`."""
    token = _STEPS.set([MAX_CHECK_STEPS])
    try:
        validator = _Validator(_local(schema), registry=Registry())
        error = next(iter(validator.iter_errors(value)), None)
    except _TooCostly as exc:
        raise ParameterError(
            f"{TGI_PREFIX}checking the answer against the job's JSON schema takes more than "
            f"{MAX_CHECK_STEPS} steps; simplify the schema"
        ) from exc
    except (Unresolvable, RecursionError) as exc:  # a backstop: checked_schema's bounds keep both away
        raise ParameterError(f"{TGI_PREFIX}the job's JSON schema cannot be checked: {exc!r}") from exc
    finally:
        _STEPS.reset(token)
    if error is None:
        return None
    path = "/".join(str(p) for p in error.absolute_path) or "the top level"
    return _short(f"at {path}: {error.message}", 300, quoted=False)


def _short(value: Any, limit: int = 80, *, quoted: bool = True) -> str:
    text = repr(value) if quoted else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _local(schema: dict[str, Any]) -> dict[str, Any]:
    # A top-level `$schema` would make jsonschema pick its stock class for the dialect it names; the
    # answer is checked as draft 2020-12 whatever the job declares (its `$ref`s are plain pointers).
    if "$schema" not in schema:
        return schema
    return {k: v for k, v in schema.items() if k != "$schema"}


class _Walk:
    """One pass over a job's schema document: limits, references, regexes, then the ref graph."""

    def __init__(self, schema: dict[str, Any], name: str) -> None:
        self.root = schema
        self.name = name
        self.edges: dict[int, list[dict[str, Any]]] = {}
        self.where: dict[int, str] = {}
        self.has_pattern_properties = False
        self.has_unevaluated_properties = False
        self.regexes: set[str] = set()

    def fail(self, problem: str) -> ParameterError:
        return ParameterError(f"{TGI_PREFIX}`{self.name}` JSON schema: {problem}")

    def run(self) -> None:
        nodes = 0
        stack: list[tuple[Any, str, int]] = [(self.root, "", 1)]
        while stack:
            value, path, depth = stack.pop()
            nodes += 1
            if nodes > MAX_SCHEMA_NODES:
                raise self.fail(f"more than {MAX_SCHEMA_NODES} values; simplify it")
            if depth > MAX_SCHEMA_DEPTH:
                raise self.fail(f"nested deeper than {MAX_SCHEMA_DEPTH} levels at {path or _ROOT}")
            if isinstance(value, float) and not math.isfinite(value):
                raise self.fail(f"{value} at {path or _ROOT} is not a finite number")
            if isinstance(value, dict):
                self.where[id(value)] = path or "#"
                self.edges[id(value)] = self.node(value, path)
                for key, child in value.items():
                    stack.append((child, f"{path}/{_escape(key)}", depth + 1))
            elif isinstance(value, list):
                stack.extend((child, f"{path}/{i}", depth + 1) for i, child in enumerate(value))
        if self.has_pattern_properties and self.has_unevaluated_properties:
            raise self.fail("`unevaluatedProperties` together with `patternProperties` is not supported")
        self.check_graph()

    def node(self, value: dict[str, Any], path: str) -> list[dict[str, Any]]:
        """Checks one object of the document; returns the subschemas applied to the same value."""
        at = path or _ROOT
        for key in _REF_KEYS:
            if isinstance(value.get(key), str):
                raise self.fail(f"`{key}` at {at} is not supported; use `$ref` to `#/...`")
        for key in ("$id", "$schema"):
            if path and isinstance(value.get(key), str):
                raise self.fail(f"`{key}` below the top level (at {at}) is not supported")
        if isinstance(value.get("pattern"), str):
            self.regex(value["pattern"], f"{at}/pattern")
        if isinstance(value.get("patternProperties"), dict):
            self.has_pattern_properties = True
            for pattern in value["patternProperties"]:
                self.regex(pattern, f"{at}/patternProperties")
        if "unevaluatedProperties" in value:
            self.has_unevaluated_properties = True
        applied: list[dict[str, Any]] = []
        ref = value.get("$ref")
        if isinstance(ref, str):
            applied.append(self.target(ref, at))
        for key in _SAME_PLACE_LISTS:
            if isinstance(value.get(key), list):
                applied.extend(s for s in value[key] if isinstance(s, dict))
        for key in _SAME_PLACE_ONE:
            if isinstance(value.get(key), dict):
                applied.append(value[key])
        if isinstance(value.get("dependentSchemas"), dict):
            applied.extend(s for s in value["dependentSchemas"].values() if isinstance(s, dict))
        return applied

    def regex(self, pattern: str, at: str) -> None:
        if pattern in self.regexes:
            return
        self.regexes.add(pattern)
        if len(self.regexes) > MAX_REGEXES:
            raise self.fail(f"more than {MAX_REGEXES} different regexes")
        checked_regex(pattern, f"`{self.name}` at {at}")

    def target(self, ref: str, at: str) -> dict[str, Any]:
        """The object a local `$ref` points to; a 422 for any other reference."""
        if ref != "#" and not ref.startswith("#/"):
            raise self.fail(
                f"`$ref` {ref!r} at {at} is refused: only references into the same schema "
                "(`#` or a JSON pointer such as `#/$defs/name`) are followed; nothing is fetched"
            )
        found: Any = self.root
        for token in ref[2:].split("/") if ref != "#" else ():
            token = unquote(token).replace("~1", "/").replace("~0", "~")
            if isinstance(found, dict) and token in found:
                found = found[token]
            elif isinstance(found, list) and token.isdigit() and int(token) < len(found):
                found = found[int(token)]
            else:
                raise self.fail(f"`$ref` {ref!r} at {at} points to nothing in the schema")
        if not isinstance(found, dict | bool):
            raise self.fail(f"`$ref` {ref!r} at {at} points to a {type(found).__name__}, not a schema")
        return found if isinstance(found, dict) else {}

    def check_graph(self) -> None:
        """Cycles, chain length and fan-out of the same-value graph (iterative depth-first search)."""
        chain: dict[int, int] = {}  # longest hop chain from a node, once finished
        expansion: dict[int, int] = {}  # subschemas applied through it, once finished
        for start in self.edges:
            if start in chain:
                continue
            on_path: set[int] = {start}
            stack: list[tuple[int, Iterator[dict[str, Any]]]] = [(start, iter(self.edges[start]))]
            while stack:
                node, children = stack[-1]
                child = next(children, None)
                if child is None:
                    stack.pop()
                    on_path.discard(node)
                    kids = [id(c) for c in self.edges[node]]
                    chain[node] = 1 + max((chain.get(k, 0) for k in kids), default=0)
                    expansion[node] = 1 + sum(expansion.get(k, 1) for k in kids)
                    if chain[node] > MAX_REF_CHAIN:
                        raise self.fail(
                            f"more than {MAX_REF_CHAIN} `$ref`/`allOf`/... hops apply to one value "
                            f"(from {self.where.get(node, '#')})"
                        )
                    if expansion[node] > MAX_EXPANSION:
                        raise self.fail(
                            f"more than {MAX_EXPANSION} subschemas apply to one value "
                            f"(from {self.where.get(node, '#')}); simplify it"
                        )
                    continue
                key = id(child)
                if key in on_path:
                    raise self.fail(
                        f"`$ref` cycle through {self.where.get(key, '#')}: it applies to the same value "
                        "again without descending into it, so checking would never end"
                    )
                if key not in chain and key in self.edges:
                    on_path.add(key)
                    stack.append((key, iter(self.edges[key])))


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


# -- the RE2 validator class -------------------------------------------------------------------------

# The budget of the check in progress. A context variable, because jsonschema builds a new validator
# object for every subschema and keeps no per-check state we could extend; `asyncio.to_thread`
# copies the context, so concurrent checks never share one.
_STEPS: ContextVar[list[int]] = ContextVar("infernet_tgi_schema_steps")


class _TooCostly(Exception):
    """Raised inside a check when it has spent its `MAX_CHECK_STEPS`; translated right above."""


Keyword = Callable[[Any, Any, Any, dict[str, Any]], Any]


def _counted(keyword: Keyword) -> Keyword:
    def spend_then(validator: Any, value: Any, instance: Any, schema: dict[str, Any]) -> Any:
        budget = _STEPS.get()
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooCostly
        if budget[0] % _YIELD_EVERY == 0:
            # Hand the GIL over (the event loop thread may be waiting for it) instead of holding it
            # for the interpreter's whole 5 ms switch interval each time.
            time.sleep(0)
        return keyword(validator, value, instance, schema)

    return spend_then


def _search(pattern: str, text: str) -> bool:
    """An unanchored RE2 search, paid for from the check's budget by the length of `text`."""
    budget = _STEPS.get()
    budget[0] -= len(text) // _CHARS_PER_STEP
    if budget[0] < 0:
        raise _TooCostly
    return _compile(pattern).search(text) is not None


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{_short(instance)} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, child in instance.items():
            if _search(pattern, key):
                yield from validator.descend(child, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [key for key in instance if key not in properties and not any(_search(p, key) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        listed = ", ".join(repr(each) for each in sorted(extras))
        yield ValidationError(f"Additional properties are not allowed ({listed} unexpected)")


_Validator = extend(
    Draft202012Validator,
    validators={
        name: _counted(keyword)
        for name, keyword in {
            **Draft202012Validator.VALIDATORS,
            "pattern": _pattern,
            "patternProperties": _pattern_properties,
            "additionalProperties": _additional_properties,
        }.items()
    },
)
