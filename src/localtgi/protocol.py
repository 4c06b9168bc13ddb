"""TGI wire types: request bodies, responses, stream events and errors (TGI native and OpenAI-style).

Use `parse_body` to turn a raw request body into a request model: it rejects bodies the way TGI's axum
extractors do (plain-text 400/415/422), before any handler logic runs. Response models serialise with
TGI's omission rules (`WireModel.wire`), e.g. `top_tokens` disappears when empty.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)
from pydantic import ValidationError as PydanticValidationError

from localtgi import json_bodies
from localtgi.errors import RequestBodyError

U32 = Annotated[int, Field(ge=0, le=2**32 - 1)]
U64 = Annotated[int, Field(ge=0, le=2**64 - 1)]


class _Request(BaseModel):
    # serde is strict about types ("5" is not a number) but ignores unknown fields.
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class JsonGrammar(_Request):
    type: Literal["json", "json_object"]
    value: Any


class RegexGrammar(_Request):
    type: Literal["regex"]
    value: str


class JsonSchemaValue(_Request):
    name: str | None = None
    strict: bool | None = None
    schema_: Any = Field(validation_alias=AliasChoices("schema", "schema_"))


class JsonSchemaGrammar(_Request):
    type: Literal["json_schema"]
    value: JsonSchemaValue


Grammar = Annotated[JsonGrammar | RegexGrammar | JsonSchemaGrammar, Field(discriminator="type")]


class GenerateParameters(_Request):
    best_of: U32 | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: U32 | None = None
    return_full_text: bool | None = None
    stop: list[str] = Field(default_factory=list)
    truncate: U32 | None = None
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: U64 | None = None
    top_n_tokens: U32 | None = None
    grammar: Grammar | None = None
    adapter_id: str | None = None


def _sampling_parameters() -> GenerateParameters:
    # TGI quirk: an omitted `parameters` object defaults with do_sample=true; `{}` does not.
    return GenerateParameters(do_sample=True)


class GenerateRequest(_Request):
    inputs: str
    parameters: GenerateParameters = Field(default_factory=_sampling_parameters)


class CompatGenerateRequest(GenerateRequest):
    stream: bool = False


class WireModel(BaseModel):
    """A response model; fields named in `omit_empty` are left out when None or empty."""

    omit_empty: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in self.omit_empty:
            if key in data and data[key] in (None, []):
                del data[key]
        return data

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class Token(WireModel):
    id: int
    text: str
    logprob: float
    special: bool


class PrefillToken(WireModel):
    id: int
    text: str
    logprob: float | None


class BestOfSequence(WireModel):
    omit_empty = frozenset({"top_tokens"})
    generated_text: str
    finish_reason: str
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken]
    tokens: list[Token]
    top_tokens: list[list[Token]] = Field(default_factory=list)


class Details(WireModel):
    omit_empty = frozenset({"top_tokens", "best_of_sequences"})
    finish_reason: str
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken]
    tokens: list[Token]
    top_tokens: list[list[Token]] = Field(default_factory=list)
    best_of_sequences: list[BestOfSequence] | None = None


class GenerateResponse(WireModel):
    omit_empty = frozenset({"details"})
    generated_text: str
    details: Details | None = None


class StreamDetails(WireModel):
    finish_reason: str
    generated_tokens: int
    seed: int | None
    input_length: int


class StreamResponse(WireModel):
    omit_empty = frozenset({"top_tokens"})
    index: int
    token: Token
    top_tokens: list[Token] = Field(default_factory=list)
    generated_text: str | None = None
    details: StreamDetails | None = None


class ErrorResponse(WireModel):
    error: str
    error_type: str


class SimpleToken(WireModel):
    id: int
    text: str
    start: int
    stop: int


class Info(WireModel):
    omit_empty = frozenset({"model_sha", "model_pipeline_tag", "sha", "docker_label"})
    model_id: str
    model_sha: str | None
    model_pipeline_tag: str | None
    max_concurrent_requests: int
    max_best_of: int
    max_stop_sequences: int
    max_input_tokens: int
    max_total_tokens: int
    validation_workers: int
    max_client_batch_size: int
    router: str
    version: str
    sha: str | None
    docker_label: str | None


class ModelCard(WireModel):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str


class ModelList(WireModel):
    object: str = "list"
    data: list[ModelCard]


# --- Messages API (OpenAI-compatible) ------------------------------------------------------------


class TextChunk(_Request):
    type: Literal["text"]
    text: str


class ImageUrl(_Request):
    url: str


class ImageChunk(_Request):
    type: Literal["image_url"]
    image_url: ImageUrl


MessageChunk = Annotated[TextChunk | ImageChunk, Field(discriminator="type")]


class ChatMessage(_Request):
    role: str
    content: str | list[MessageChunk] | None = None
    name: str | None = None


class StreamOptions(_Request):
    include_usage: bool = False


class ChatRequest(_Request):
    model: str | None = None
    messages: list[ChatMessage]
    frequency_penalty: float | None = None
    logit_bias: list[float] | None = None
    logprobs: bool | None = None
    top_logprobs: U32 | None = None
    max_tokens: U32 | None = Field(
        default=None, validation_alias=AliasChoices("max_tokens", "max_completion_tokens")
    )
    n: U32 | None = None
    presence_penalty: float | None = None
    seed: U64 | None = None
    # OpenAI clients may send a single string; TGI only documents the list form.
    stop: list[str] | str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    tool_prompt: str | None = None
    response_format: Grammar | None = None


class CompletionRequest(_Request):
    model: str | None = None
    prompt: str | list[str]
    max_tokens: U32 | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    seed: U64 | None = None
    suffix: str | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] | str | None = None


class Usage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(WireModel):
    token: str
    logprob: float


class TokenLogprob(WireModel):
    token: str
    logprob: float
    top_logprobs: list[TopLogprob]


class ChatLogprobs(WireModel):
    content: list[TokenLogprob]


class OutputMessage(WireModel):
    role: str = "assistant"
    content: str


class ChatChoice(WireModel):
    index: int
    message: OutputMessage
    logprobs: ChatLogprobs | None
    finish_reason: str


class ChatCompletion(WireModel):
    object: str = "chat.completion"
    id: str = ""
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(WireModel):
    role: str = "assistant"
    content: str


class ChatChunkChoice(WireModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class ChatCompletionChunk(WireModel):
    object: str = "chat.completion.chunk"
    id: str = ""
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(WireModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str


class Completion(WireModel):
    object: str = "text_completion"
    id: str = ""
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(WireModel):
    omit_empty = frozenset({"usage"})  # TGI's intermediate chunks have no usage member
    object: str = "text_completion"
    id: str = ""
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatError(WireModel):
    message: str
    http_status_code: int


class ChatErrorEvent(WireModel):
    error: ChatError


# --- body parsing ---------------------------------------------------------------------------------

RequestT = TypeVar("RequestT", bound=BaseModel)


def _describe(exc: PydanticValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def parse_body(model: type[RequestT], body: bytes, content_type: str | None, *, limit: int) -> RequestT:
    """Parse a JSON request body with TGI's (axum's) plain-text rejections.

    Raises RequestBodyError: 413 over `limit` bytes, 415 without a JSON content type, 400 on a JSON
    syntax error, 422 when the JSON does not match `model`.
    """
    if len(body) > limit:
        raise RequestBodyError(413, "Failed to buffer the request body: length limit exceeded")
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if not (mime == "application/json" or (mime.startswith("application/") and "+json" in mime)):
        raise RequestBodyError(415, "Expected request with `Content-Type: application/json`")
    try:
        data = json_bodies.read(body)
    except ValueError as exc:
        raise RequestBodyError(400, f"Failed to parse the request body as JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        raise RequestBodyError(
            422, f"Failed to deserialize the JSON body into the target type: {_describe(exc)}"
        ) from None
