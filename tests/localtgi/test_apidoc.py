"""localtgi's OpenAPI document at `/api-doc/openapi.json` (where TGI serves it) and its `/docs` page:
a valid OpenAPI 3.1 document that lists every route the app serves, with TGI's request and response
schemas on the generation routes."""

from __future__ import annotations

from typing import Any

import httpx
from openapi_spec_validator import validate

from localtgikit import RunningServer


def _get(server: RunningServer, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{server.port}{path}", timeout=30)


def test_document_validates_and_lists_every_route(localtgi: RunningServer) -> None:
    response = _get(localtgi, "/api-doc/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    validate(document)  # raises on any OpenAPI 3.1 error
    served = {
        (method.lower(), rule.rule)
        for rule in localtgi.app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    documented = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert documented == served
    for route in ("/generate", "/generate_stream", "/v1/chat/completions", "/chat_tokenize", "/tokenize"):
        assert ("post", route) in documented
    always = {("get", "/info"), ("get", "/health"), ("get", "/api-doc/openapi.json"), ("get", "/docs")}
    assert always <= served


def test_generation_schemas_are_tgis(localtgi: RunningServer) -> None:
    document = _get(localtgi, "/api-doc/openapi.json").json()
    schemas = document["components"]["schemas"]
    generate = document["paths"]["/generate"]["post"]
    request_ref = generate["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    request = schemas[request_ref.rsplit("/", 1)[1]]
    assert {"inputs", "parameters"} <= set(request["properties"])
    assert "inputs" in request["required"]
    parameters = schemas["GenerateParameters"]["properties"]
    for name in ("max_new_tokens", "top_k", "top_p", "typical_p", "watermark", "best_of", "grammar"):
        assert name in parameters, name
    assert set(generate["responses"]) >= {"200", "422", "424", "429"}
    stream = document["paths"]["/generate_stream"]["post"]["responses"]["200"]["content"]
    assert "text/event-stream" in stream
    assert document["info"]["title"] == "localtgi"


def test_docs_page_loads_the_document(localtgi: RunningServer) -> None:
    response = _get(localtgi, "/docs")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert '"/api-doc/openapi.json"' in response.text and "swagger-ui" in response.text
