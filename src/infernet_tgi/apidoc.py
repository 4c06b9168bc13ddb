"""The container's OpenAPI document (`GET /openapi.json`) and its Swagger UI page (`GET /docs`).

Use `document_routes(app)` once, after the routes are registered: quart-schema generates the document
from the app's URL map and the pydantic models attached here to each view with its public `document_*`
decorators, so the routes stay as they are and their behaviour (and error bodies) does not change.
The page loads Swagger UI from a CDN in the reader's browser; the container itself fetches nothing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, RootModel
from quart import Quart
from quart_schema import (
    DataSource,
    Info,
    OpenAPIProvider,
    QuartSchema,
    document_querystring,
    document_request,
    document_response,
)

from . import __version__
from .protocol import InfernetInput, OffchainResult, OnchainResult, SignedOffchainResult
from .resources import AttestedServiceResources, ModelSupport, ServiceResources

TITLE = "infernet-tgi"


class Health(BaseModel):
    """`GET /`: answered as soon as the process serves."""

    message: str


class JobAnswer(RootModel[OffchainResult | SignedOffchainResult | OnchainResult]):
    """An off-chain answer (destination 1; signed when asked), or the five on-chain keys as unprefixed
    hex (destination 0).
    Stream jobs (destination 2) get UTF-8 text chunks instead (`text/plain`)."""


class ErrorBody(BaseModel):
    """Every error: the HTTP status as a string in `code`, its reason, and the real cause."""

    code: str
    name: str
    description: str


class ModelQuery(BaseModel):
    model_id: str | None = None


# Statuses `POST /service_output` answers with an ErrorBody (README, "Errors").
JOB_ERRORS = (400, 401, 413, 422, 424, 429, 500, 502, 503, 504)


class _Provider(OpenAPIProvider):
    """quart-schema's document plus the two bodies that are not JSON: stream jobs' text and metrics."""

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        text = {"text/plain": {"schema": {"type": "string"}}}
        responses = document["paths"]["/service_output"]["post"]["responses"]
        answer = responses[200 if 200 in responses else "200"]  # quart-schema keys them by int
        answer["description"] = "The answer; stream jobs (destination 2) get UTF-8 text chunks as generated"
        answer["content"].update(text)
        metrics = document["paths"]["/metrics"]["get"]
        metrics["responses"] = {"200": {"description": "Prometheus text format", "content": text}}
        return document


def document_routes(app: Quart) -> None:
    """Serve `/openapi.json` and `/docs` for `app`'s routes (no ReDoc or Scalar pages)."""
    QuartSchema(
        app,
        info=Info(title=TITLE, version=__version__),
        openapi_path="/openapi.json",
        swagger_ui_path="/docs",
        redoc_ui_path=None,
        scalar_ui_path=None,
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},  # when TGI_INF_BEARER is set
        openapi_provider_class=_Provider,
    )
    views = app.view_functions
    document_response(Health)(views["health"])
    job = document_request(InfernetInput, source=DataSource.JSON)(views["service_output"])
    document_response(JobAnswer)(job)
    for status in JOB_ERRORS:
        document_response(ErrorBody, status_code=status)(job)
    resources = document_querystring(ModelQuery)(views["service_resources"])
    document_response(RootModel[ServiceResources | AttestedServiceResources | ModelSupport])(resources)
