"""Jobs: an Infernet node's request body turned into one validated generation.

Use `parse_job` on the JSON body of `POST /service_output`. Input is read by `source` (hex for on-chain,
an object off-chain, including a delegated subscription's data and a previous container's output), the
result shape is chosen by `destination`. Pydantic errors are translated here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from . import onchain
from .config import Settings
from .constraints import Constraint
from .errors import (
    BadJobError,
    ParameterError,
    PayloadTooLargeError,
    ProofNotSupportedError,
)
from .generation import GenerationRequest
from .protocol import (
    ONCHAIN,
    STREAM,
    TGI_PREFIX,
    GenerationParameters,
    InfernetInput,
    OffchainData,
    OutputConstraints,
)

_NO_CONSTRAINTS = OutputConstraints()  # frozen: shared by every job without parameters
# Ritual's reference words lead (its test suite looks for them); the rest says what to change.
_NO_PROOF = (
    "Proofs are not supported for TGI Client Inference Service without an attestation key "
    "(TGI_INF_ATTESTATION_KEY): set requires_proof to false, or sign results with a key"
)
_NO_PROOF_STREAM = (
    "Proofs are not supported for TGI Client Inference Service on stream jobs: a stream has no "
    "place for a proof (ask off-chain with destination 1 instead)"
)


@dataclass(frozen=True)
class Job:
    """A validated job: where it came from, where its answer goes, and what to generate."""

    source: int
    destination: int
    request: GenerationRequest
    # the on-chain hex as received; abi.encode(prompt) if delegated or a proof is wanted; else ""
    raw_input: str
    requires_proof: bool = False

    @property
    def streaming(self) -> bool:
        return self.destination == STREAM

    @property
    def onchain_output(self) -> bool:
        return self.destination == ONCHAIN


def parse_job(body: Any, settings: Settings) -> Job:
    """Validate a node body into a `Job`, or raise the precise `JobError`."""
    return JobReader(settings).parse(body)


class JobReader:
    """`parse_job` under one `Settings`: use one per app for every job. The operator's defaults are
    merged and checked once per destination kind, so a job without parameters (the common case)
    costs no parameter validation of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._plain: dict[bool, dict[str, Any]] = {}  # by `streaming`: the defaults alone, checked

    def parse(self, body: Any) -> Job:
        """Validate a node body into a `Job`, or raise the precise `JobError`."""
        return _parse(body, self.settings, self._parameters)

    def _parameters(self, overrides: dict[str, Any] | None, *, streaming: bool) -> dict[str, Any]:
        if overrides:
            return merge_parameters(self.settings, overrides, streaming=streaming)
        plain = self._plain.get(streaming)
        if plain is None:  # raises, uncached, when the defaults themselves break a rule
            plain = self._plain[streaming] = merge_parameters(self.settings, None, streaming=streaming)
        return dict(plain)  # a fresh top level per job: callers pop and add keys, never edit values


def _parse(body: Any, settings: Settings, parameters_for: Callable[..., dict[str, Any]]) -> Job:
    if not isinstance(body, dict):
        raise BadJobError(f"job body must be a JSON object, got {_kind(body)}")
    try:
        job = InfernetInput.model_validate(body)
    except ValidationError as exc:
        raise BadJobError(f"not an Infernet job: {_describe(exc)}") from exc
    requires_proof = bool(job.requires_proof)
    if requires_proof and (settings.attester is None or job.destination == STREAM):
        raise ProofNotSupportedError(_NO_PROOF_STREAM if settings.attester else _NO_PROOF)
    if job.source == ONCHAIN:
        if not isinstance(job.data, str):
            raise BadJobError("on-chain job data must be a hex string, got an object")
        prompt, raw_parameters = onchain.decode_input(job.data)
        messages = None
        raw_input = job.data
    else:
        if not isinstance(job.data, dict):
            raise BadJobError('off-chain job data must be an object such as {"text": "..."}, got a string')
        prompt, messages, raw_parameters = _offchain(job.data)
        # A delegated subscription (off-chain data, on-chain answer) gets its prompt ABI-encoded as
        # raw_input, so the consumer can tell which question an answer belongs to (a chat: its JSON).
        asked = prompt if messages is None else json.dumps(messages, ensure_ascii=False)
        # The same bytes are what an attestation signs for an off-chain question (attestation.py).
        raw_input = onchain.encode_text(asked) if job.destination == ONCHAIN or requires_proof else ""
    if messages is None and settings.prompt_as_chat:
        # An instruct model answers a bare prompt poorly; as one user turn its chat template applies.
        messages = [{"role": "user", "content": prompt}]
    size = len(prompt) if messages is None else sum(len(m["content"]) for m in messages)
    if size > settings.max_prompt_chars:
        raise PayloadTooLargeError(
            f"prompt is {size} characters; this container accepts at most "
            f"{settings.max_prompt_chars} (TGI_INF_MAX_PROMPT_CHARS)"
        )
    overrides, wanted = split_constraints(raw_parameters)
    parameters = parameters_for(overrides, streaming=job.destination == STREAM)
    constraint = Constraint.from_parameters(
        response_pool=wanted.response_pool,
        json_format=wanted.json_format,
        json_format_is_json_schema=wanted.json_format_is_json_schema,
        grammar=parameters.pop("grammar", None),
    )
    return Job(
        source=job.source,
        destination=job.destination,
        request=GenerationRequest(
            prompt=prompt,
            parameters=parameters,
            messages=None if messages is None else tuple(messages),
            constraint=constraint,
        ),
        raw_input=raw_input,
        requires_proof=requires_proof,
    )


def split_constraints(
    parameters: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, OutputConstraints]:
    """Our constraint keys (`response_pool`, `json_format`, ...) apart from TGI's parameters."""
    if not parameters:
        return parameters, _NO_CONSTRAINTS
    ours = {k: v for k, v in parameters.items() if k in OutputConstraints.NAMES}
    try:
        wanted = OutputConstraints.model_validate(ours)
    except ValidationError as exc:
        raise ParameterError(TGI_PREFIX + _describe(exc)) from exc
    return {k: v for k, v in parameters.items() if k not in OutputConstraints.NAMES}, wanted


def merge_parameters(
    settings: Settings, overrides: dict[str, Any] | None, *, streaming: bool
) -> dict[str, Any]:
    """The job's parameters over the operator's defaults, checked with TGI's rules and our ceiling."""
    try:
        given = GenerationParameters.model_validate(overrides).tgi_json() if overrides else {}
    except ValidationError as exc:
        raise ParameterError(TGI_PREFIX + _describe(exc)) from exc
    merged = {**settings.defaults.tgi_json(), **given}
    merged.setdefault("max_new_tokens", settings.default_max_new_tokens)
    parameters = GenerationParameters.model_validate(merged)
    problem = parameters.tgi_rule_violation(streaming=streaming)
    if problem:
        raise ParameterError(TGI_PREFIX + problem)
    ceiling = settings.max_new_tokens_limit
    if parameters.max_new_tokens is not None and parameters.max_new_tokens > ceiling:
        raise ParameterError(
            f"{TGI_PREFIX}`max_new_tokens` must be <= {ceiling} on this container "
            f"(TGI_INF_MAX_NEW_TOKENS). Given: {parameters.max_new_tokens}"
        )
    return parameters.tgi_json()


def _offchain(
    data: dict[str, Any],
) -> tuple[str, list[dict[str, str]] | None, dict[str, Any] | None]:
    try:
        parsed = OffchainData.model_validate(data)
    except ValidationError as exc:
        raise BadJobError(f"off-chain data: {_describe(exc)}") from exc
    if parsed.messages is not None:
        if parsed.text is not None or parsed.prompt is not None:
            raise BadJobError('off-chain data: give "messages" or "text"/"prompt", not both')
        return "", [m.plain() for m in parsed.messages], parsed.parameters
    prompt = parsed.the_prompt()
    if prompt is None:
        raise BadJobError(
            'off-chain data needs the prompt under "text" (or "prompt"), or a chat under "messages"; '
            f"got keys {sorted(data) or 'none'}"
        )
    return prompt, None, parsed.parameters


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown parameter `{where}`")
        elif err["type"] == "missing":
            parts.append(f"`{where}` is required")
        elif err["type"] == "finite_number":
            parts.append(f"`{where}` must be a finite number (NaN, Infinity and overflowing values are not)")
        else:
            parts.append(f"`{where}`: {err['msg']}")
    return "; ".join(parts)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
