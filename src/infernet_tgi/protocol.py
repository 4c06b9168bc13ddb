"""Wire types: what the Infernet node sends and receives, and TGI's generation parameters.

Use these to parse and validate untrusted JSON. They hold no serving logic; `jobs` turns them into a
`Job` and `errors` renders failures.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

# JobLocation in the node: ONCHAIN = 0, OFFCHAIN = 1, STREAM = 2.
ONCHAIN, OFFCHAIN, STREAM = 0, 1, 2

TGI_PREFIX = "Input validation error: "
# How deep a job's JSON may nest (the body, on-chain parametersJson): room for a JSON schema at its
# own limit inside `data.parameters`, far below where Python's json recursion gives out.
MAX_JSON_DEPTH = 64


class InfernetInput(BaseModel):
    """The body of `POST /service_output` (node 1.x). Streams omit `requires_proof`."""

    model_config = ConfigDict(extra="ignore")

    source: Literal[0, 1]
    destination: Literal[0, 1, 2]
    data: StrictStr | dict[str, Any]
    requires_proof: StrictBool | None = False


class Grammar(BaseModel):
    """TGI's `grammar`: `json` (alias `json_object`), `json_schema` or `regex`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["json", "json_object", "json_schema", "regex"]
    value: Any


class GenerationParameters(BaseModel):
    """TGI's generate parameters, by TGI's names. Unknown names are rejected; `stop_sequences` (the
    text-generation client's name, used in infernet-ml configurations) is accepted as `stop`."""

    # allow_inf_nan: NaN, Infinity and 1e999 (inf once parsed) are not numbers TGI accepts, and NaN
    # would go upstream as the invalid JSON token `NaN`.
    model_config = ConfigDict(
        extra="forbid", strict=True, populate_by_name=True, frozen=True, allow_inf_nan=False
    )

    best_of: StrictInt | None = Field(default=None, ge=0)
    decoder_input_details: StrictBool | None = None
    details: StrictBool | None = None
    do_sample: StrictBool | None = None
    max_new_tokens: StrictInt | None = Field(default=None, ge=0)
    repetition_penalty: StrictFloat | None = None
    frequency_penalty: StrictFloat | None = None
    return_full_text: StrictBool | None = None
    seed: StrictInt | None = Field(default=None, ge=0, lt=2**64)
    stop: list[StrictStr] | None = Field(default=None, alias="stop_sequences")
    temperature: StrictFloat | None = None
    top_k: StrictInt | None = None
    top_p: StrictFloat | None = None
    truncate: StrictInt | None = Field(default=None, ge=0)
    typical_p: StrictFloat | None = None
    watermark: StrictBool | None = None
    top_n_tokens: StrictInt | None = Field(default=None, ge=0)
    grammar: Grammar | None = None
    adapter_id: StrictStr | None = None

    def tgi_rule_violation(self, *, streaming: bool) -> str | None:
        """The message TGI's router would give for these values, or None when they pass."""
        sampling = bool(self.do_sample) or any(
            (
                self.temperature is not None and self.temperature != 1.0,
                self.top_k is not None,
                self.top_p is not None and self.top_p < 1.0,
                self.typical_p is not None and self.typical_p < 1.0,
            )
        )
        checks: list[tuple[bool, str]] = [
            (
                self.temperature is not None and self.temperature <= 0,
                "`temperature` must be strictly positive",
            ),
            (
                self.repetition_penalty is not None and self.repetition_penalty <= 0,
                "`repetition_penalty` must be strictly positive",
            ),
            (
                self.frequency_penalty is not None and not -2.0 <= self.frequency_penalty <= 2.0,
                "`frequency_penalty` must be >= -2.0 and <= 2.0",
            ),
            (self.top_k is not None and self.top_k <= 0, "`top_k` must be strictly positive"),
            (
                self.top_p is not None and not 0.0 < self.top_p < 1.0,
                "`top_p` must be > 0.0 and < 1.0",
            ),
            (
                self.typical_p is not None and not 0.0 < self.typical_p < 1.0,
                "`typical_p` must be > 0.0 and < 1.0",
            ),
            (self.max_new_tokens == 0, "`max_new_tokens` must be strictly positive"),
            (self.truncate == 0, "`truncate` must be strictly positive"),
            (self.best_of == 0, "`best_of` must be strictly positive"),
            (
                (self.best_of or 1) > 1 and not sampling,
                "you must use sampling when `best_of` is > 1",
            ),
            (
                (self.best_of or 1) > 1 and self.seed is not None,
                "`seed` must not be set when `best_of` > 1",
            ),
            (
                streaming and (self.best_of or 1) > 1,
                "`best_of` != 1 is not supported when streaming tokens",
            ),
            (
                streaming and bool(self.decoder_input_details),
                "`decoder_input_details` == true is not supported when streaming tokens",
            ),
            (
                self.grammar is not None and self.grammar.value in (None, "", {}, []),
                "`grammar` value must not be empty",
            ),
        ]
        for broken, message in checks:
            if broken:
                return message
        return None

    def tgi_json(self) -> dict[str, Any]:
        """The `parameters` object sent to TGI: set fields only, by TGI's names."""
        return self.model_dump(exclude_none=True, by_alias=False)


class OutputConstraints(BaseModel):
    """Our constrained-output parameters, given beside TGI's in `parameters` (happy_vllm's names):
    `response_pool` (the answer is exactly one of these strings), `json_format` (a simple
    field->type map, or a JSON schema when `json_format_is_json_schema`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    response_pool: list[StrictStr] | None = Field(default=None, max_length=1024)
    json_format: dict[str, Any] | None = None
    json_format_is_json_schema: StrictBool | None = None

    NAMES: ClassVar[tuple[str, ...]] = ("response_pool", "json_format", "json_format_is_json_schema")


class TextPart(BaseModel):
    """An OpenAI content part; only text is accepted (no image inputs)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    """One chat turn: `role` and `content` (a string or a list of text parts)."""

    model_config = ConfigDict(extra="forbid")

    role: StrictStr = Field(min_length=1)
    content: StrictStr | list[TextPart]

    def plain(self) -> dict[str, str]:
        content = self.content
        text = content if isinstance(content, str) else "".join(p.text for p in content)
        return {"role": self.role, "content": text}


class OffchainData(BaseModel):
    """Off-chain `data`: the prompt under `text` (the seed's key), `prompt`, or `output` (the previous
    container's result in a chain), or a chat under `messages`, plus optional TGI `parameters`
    (and our `OutputConstraints` beside them). Other keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    text: StrictStr | None = None
    prompt: StrictStr | None = None
    output: StrictStr | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    parameters: dict[str, Any] | None = None

    def the_prompt(self) -> str | None:
        for value in (self.text, self.prompt, self.output):
            if value is not None:
                return value
        return None


class Usage(BaseModel):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class OffchainResult(BaseModel):
    """What an off-chain job gets back: `output` is the text (the key Ritual's service uses)."""

    output: str
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)


class SignedOffchainResult(OffchainResult):
    """An off-chain answer with `requires_proof` from a container with an attestation key: `proof` is
    the hex attestation of (abi.encode(prompt), abi.encode(output), model), `attester` its signer."""

    proof: str
    attester: str


class OnchainResult(BaseModel):
    """The five keys the node serializes for delivery: unprefixed even-length hex or ""."""

    raw_input: str
    processed_input: str = ""
    raw_output: str
    processed_output: str = ""
    proof: str = ""
