"""localtgi's OpenAPI document at `GET /api-doc/openapi.json` and a Swagger UI page at `GET /docs`, where
TGI serves them.

Register `routes` on the app (create_app does). The document is built on each request from the app's
URL map, so every route is listed, and the pydantic wire models of `localtgi.protocol` give the request
and response schemas of the routes they belong to. The page loads Swagger UI from a CDN in the reader's
browser; the server fetches nothing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from quart import Blueprint, Response, current_app

from localtgi import protocol as p
from localtgi.app_state import package_version

routes = Blueprint("apidoc", __name__)

OPENAPI_PATH = "/api-doc/openapi.json"
JSON = "application/json"
SSE = "text/event-stream"
ERRORS = {
    "422": "Input validation error",
    "424": "Generation error",
    "429": "Model is overloaded",
    "500": "Incomplete generation",
}


class ChatTokenizeResponse(BaseModel):
    """`POST /chat_tokenize`: the chat template applied to the messages, and its tokens."""

    tokenize_response: list[p.SimpleToken]
    templated_text: str


# (method, path) -> summary, request model, {content type: response model}; None = no JSON body.
Operation = tuple[str, type[BaseModel] | None, dict[str, Any]]
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/"): (
        "Generate tokens (compatibility route: a list, or a stream with `stream: true`)",
        p.CompatGenerateRequest,
        {JSON: list[p.GenerateResponse], SSE: p.StreamResponse},
    ),
    ("POST", "/generate"): ("Generate tokens", p.GenerateRequest, {JSON: p.GenerateResponse}),
    ("POST", "/generate_stream"): (
        "Generate a stream of tokens (server-sent events)",
        p.GenerateRequest,
        {SSE: p.StreamResponse},
    ),
    ("POST", "/tokenize"): ("Tokenize the inputs", p.GenerateRequest, {JSON: list[p.SimpleToken]}),
    ("POST", "/chat_tokenize"): (
        "Apply the chat template and tokenize",
        p.ChatRequest,
        {JSON: ChatTokenizeResponse},
    ),
    ("POST", "/v1/chat/completions"): (
        "OpenAI-compatible chat completion (a stream with `stream: true`)",
        p.ChatRequest,
        {JSON: p.ChatCompletion, SSE: p.ChatCompletionChunk},
    ),
    ("POST", "/v1/completions"): (
        "OpenAI-compatible completion (a stream with `stream: true`)",
        p.CompletionRequest,
        {JSON: p.Completion, SSE: p.CompletionChunk},
    ),
    ("GET", "/info"): ("Text generation inference endpoint info", None, {JSON: p.Info}),
    ("GET", "/v1/models"): ("The served model, OpenAI-style", None, {JSON: p.ModelList}),
    ("GET", "/"): ("Health check (200 with an empty body when healthy)", None, {}),
    ("GET", "/health"): ("Health check (200 with an empty body when healthy)", None, {}),
    ("GET", "/ping"): ("Health check (200 with an empty body when healthy)", None, {}),
    ("GET", "/metrics"): ("Prometheus metrics", None, {"text/plain": str}),
    ("GET", OPENAPI_PATH): ("This document", None, {JSON: dict}),
    ("GET", "/docs"): ("Swagger UI for this document", None, {"text/html": str}),
}

_SWAGGER = """<!doctype html>
<html><head><meta charset="utf-8"><title>localtgi API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "%s", dom_id: "#swagger-ui"});</script>
</body></html>
"""


def openapi_document(rules: list[tuple[str, str]]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `rules` ((method, path) pairs the app serves)."""
    models: set[type[BaseModel]] = {p.ErrorResponse}
    for _summary, request, bodies in OPERATIONS.values():
        if request is not None:
            models.add(request)
        for body in bodies.values():
            model = _model_of(body)
            if model is not None:
                models.add(model)
    ordered = sorted(models, key=lambda m: m.__name__)
    refs, schema = models_json_schema(
        [(m, "validation" if m in _request_models() else "serialization") for m in ordered],
        ref_template="#/components/schemas/{model}",
    )
    ref = {m: refs[(m, "validation" if m in _request_models() else "serialization")] for m in ordered}
    paths: dict[str, dict[str, Any]] = {}
    for method, path in sorted(rules):
        summary, request, bodies = OPERATIONS.get((method, path), (f"{method} {path}", None, {}))
        op: dict[str, Any] = {"summary": summary, "operationId": _operation_id(method, path)}
        if request is not None:
            op["requestBody"] = {"required": True, "content": {JSON: {"schema": ref[request]}}}
        content = {kind: {"schema": _schema(body, ref)} for kind, body in bodies.items()}
        op["responses"] = {"200": {"description": "OK", **({"content": content} if content else {})}}
        if method == "POST":
            for status, text in ERRORS.items():
                op["responses"][status] = {
                    "description": text,
                    "content": {JSON: {"schema": ref[p.ErrorResponse]}},
                }
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "localtgi",
            "description": "A TGI-compatible text-generation server for CPU",
            "version": package_version(),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": paths,
        "components": {"schemas": schema.get("$defs", {})},
    }


def served_rules() -> list[tuple[str, str]]:
    """(method, path) for every route of the running app (HEAD and OPTIONS left out)."""
    found = set()
    for rule in current_app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                found.add((method, rule.rule))
    return sorted(found)


@routes.get(OPENAPI_PATH)
async def openapi_json() -> dict[str, Any]:
    return openapi_document(served_rules())


@routes.get("/docs")
async def docs() -> Response:
    return Response(_SWAGGER % OPENAPI_PATH, content_type="text/html; charset=utf-8")


def _request_models() -> set[type[BaseModel]]:
    return {request for _s, request, _b in OPERATIONS.values() if request is not None}


def _model_of(body: Any) -> type[BaseModel] | None:
    inner = getattr(body, "__args__", (body,))[0]
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _schema(body: Any, ref: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    model = _model_of(body)
    if model is None:
        return {"type": "string"} if body is str else {"type": "object"}
    if getattr(body, "__args__", None):  # list[Model]
        return {"type": "array", "items": ref[model]}
    return ref[model]


def _operation_id(method: str, path: str) -> str:
    words = [w for w in path.replace("-", "_").replace(".", "_").split("/") if w]
    return "_".join([method.lower(), *words]) or method.lower()
