"""The container's OpenAPI document (`GET /openapi.json`) and Swagger UI page (`GET /docs`): a valid
OpenAPI 3.1 document listing every route, with the job, answer, error and service-resources schemas;
documenting the routes changes neither their answers nor their error bodies."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate
from quart.typing import TestClientProtocol as Client


async def test_document_validates_and_lists_every_route(client: Client) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = await response.get_json()
    validate(document)
    app = client.app  # type: ignore[attr-defined]
    served = {
        (method.lower(), rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in ("static", "openapi", "swagger_ui")
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    documented = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert served == documented
    routes = {("post", "/service_output"), ("get", "/service-resources"), ("get", "/"), ("get", "/metrics")}
    assert routes <= served


async def test_job_answer_and_error_schemas(client: Client) -> None:
    document = await (await client.get("/openapi.json")).get_json()
    schemas = document["components"]["schemas"]

    def resolved(content: dict[str, Any]) -> dict[str, Any]:
        schema: dict[str, Any] = content["application/json"]["schema"]
        return schemas[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema

    job = document["paths"]["/service_output"]["post"]
    request = resolved(job["requestBody"]["content"])
    assert {"source", "destination", "data", "requires_proof"} <= set(request["properties"])
    assert {"200", "400", "401", "413", "422", "424", "429", "502", "503", "504"} <= set(job["responses"])
    assert "text/plain" in job["responses"]["200"]["content"]  # stream jobs
    error = resolved(job["responses"]["503"]["content"])
    assert set(error["properties"]) == {"code", "name", "description"}
    answers = {ref["$ref"].rsplit("/", 1)[1] for ref in resolved(job["responses"]["200"]["content"])["anyOf"]}
    assert answers == {"OffchainResult", "SignedOffchainResult", "OnchainResult"}
    assert {"proof", "attester"} <= set(schemas["SignedOffchainResult"]["properties"])
    assert "attestation" in schemas["AttestedServiceResources"]["properties"]
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    resources = document["paths"]["/service-resources"]["get"]
    assert [p["name"] for p in resources["parameters"]] == ["model_id"]
    assert "ServiceResources" in schemas and "CPUInfo" in schemas and "DiskInfo" in schemas
    assert document["info"]["title"] == "infernet-tgi"


async def test_docs_page_and_unchanged_error_bodies(client: Client) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in await page.get_data(as_text=True)
    bad = await client.post("/service_output", data=b"not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400
    body = await bad.get_json()
    assert set(body) == {"code", "name", "description"} and body["code"] == "400"
    missing = await client.get("/nowhere")
    assert missing.status_code == 404 and (await missing.get_json())["code"] == "404"
