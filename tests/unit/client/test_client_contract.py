"""The client's models against the service's OpenAPI schema, so that the two cannot drift apart.

The client (``ich_client``) is a separate distribution that imports nothing of the service; this test is the
one place that sees both. It normalises both JSON schemas (refs resolved, nullability folded in) and
compares them recursively: same field names at every level, the client never requires a field the service
may omit, compatible types, and the client accepts null wherever the service may send it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from ich_client import CaseResult, Health, Job, JobPage, ModelsInfo
from pydantic import BaseModel

from api.app import create_app
from api.settings import Settings
from tests.support.fake_engine import FakeEngine

Schema = dict[str, Any]
SCALARS = {"string", "number", "integer", "boolean"}


def _resolve(schema: Schema, root: Schema) -> Schema:
    while "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def normalise(schema: Schema, root: Schema) -> Schema:
    """A schema reduced to what the contract is about: kinds, fields, required sets, nullability."""
    schema = _resolve(schema, root)
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return normalise(schema["allOf"][0], root)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            variants = [v for v in schema[key] if _resolve(v, root).get("type") != "null"]
            nullable = len(variants) < len(schema[key])
            if len(variants) == 1:
                inner = normalise(variants[0], root)
                return {**inner, "nullable": nullable or inner["nullable"]}
            return {"kind": "union", "variants": [normalise(v, root) for v in variants], "nullable": nullable}
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {
            "kind": "object",
            "properties": {k: normalise(v, root) for k, v in schema.get("properties", {}).items()},
            "required": set(schema.get("required", [])),
            "nullable": False,
        }
    if kind == "array":
        if "prefixItems" in schema:
            return {
                "kind": "tuple",
                "items": [normalise(v, root) for v in schema["prefixItems"]],
                "nullable": False,
            }
        return {"kind": "array", "items": normalise(schema.get("items", {}), root), "nullable": False}
    if kind in SCALARS:
        return {"kind": kind, "nullable": False}
    return {"kind": "any", "nullable": False}


def differences(
    client: Schema, server: Schema, path: str = "$", client_only: frozenset[str] = frozenset()
) -> list[str]:
    """Every way the client's schema disagrees with the service's (empty: compatible)."""
    problems: list[str] = []
    if client["kind"] == "any" or server["kind"] == "any":
        return problems
    if server["nullable"] and not client["nullable"]:
        problems.append(f"{path}: the service may send null, the client does not accept it")
    ck, sk = client["kind"], server["kind"]
    if ck == "object" and sk == "object":
        cprops, sprops = client["properties"], server["properties"]
        for name in sorted(set(sprops) - set(cprops)):
            problems.append(f"{path}.{name}: sent by the service, unknown to the client")
        for name in sorted(set(cprops) - set(sprops) - client_only):
            problems.append(f"{path}.{name}: expected by the client, not in the service's schema")
        for name in sorted(client["required"] - server["required"]):
            problems.append(f"{path}.{name}: required by the client, optional for the service")
        for name in sorted(set(cprops) & set(sprops)):
            problems.extend(differences(cprops[name], sprops[name], f"{path}.{name}"))
    elif ck == "array" and sk in ("array", "tuple"):
        server_items = [server["items"]] if sk == "array" else server["items"]
        for i, item in enumerate(server_items):
            problems.extend(differences(client["items"], item, f"{path}[{i if sk == 'tuple' else '*'}]"))
    elif ck == "tuple" and sk == "tuple":
        if len(client["items"]) != len(server["items"]):
            problems.append(f"{path}: tuple of {len(client['items'])} vs {len(server['items'])}")
        for i, (c, s) in enumerate(zip(client["items"], server["items"], strict=False)):
            problems.extend(differences(c, s, f"{path}[{i}]"))
    elif ck in SCALARS and sk in SCALARS:
        if ck != sk and not (ck == "number" and sk == "integer"):
            problems.append(f"{path}: client {ck}, service {sk}")
    else:
        problems.append(f"{path}: client {ck}, service {sk}")
    return problems


def client_schema(model: type[BaseModel]) -> Schema:
    schema = model.model_json_schema(mode="validation")
    return normalise(schema, schema)


@pytest.fixture(scope="module")
def openapi() -> Schema:
    # The schema does not need a running engine; the fake one keeps create_app from loading any.
    app = create_app(Settings(), engine=FakeEngine())
    return app.openapi()


def response_schema(openapi: Schema, method: str, path: str, status: str = "200") -> Schema:
    content = openapi["paths"][path][method]["responses"][status]["content"]["application/json"]
    return normalise(content["schema"], openapi)


def test_case_result_matches_the_service(openapi: Schema) -> None:
    server = response_schema(openapi, "post", "/v1/cases")
    assert {"ich_probability", "slices", "timing_ms"} <= set(server["properties"])  # the right schema
    assert differences(client_schema(CaseResult), server) == []


def test_models_info_matches_the_service(openapi: Schema) -> None:
    assert differences(client_schema(ModelsInfo), response_schema(openapi, "get", "/v1/models")) == []


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_matches_the_service(openapi: Schema, path: str) -> None:
    # ``ok`` is the client's own field (from the HTTP status); /healthz sends a subset of /readyz's fields.
    server = response_schema(openapi, "get", path)
    problems = differences(
        client_schema(Health), server, client_only=frozenset({"ok", "engine", "model_version"})
    )
    assert problems == []


def test_jobs_match_the_service(openapi: Schema) -> None:
    job = response_schema(openapi, "get", "/v1/studies/{study_id}")
    assert {"status", "attempts", "result"} <= set(job["properties"])
    assert differences(client_schema(Job), job) == []
    # The 202 of POST /v1/studies is a subset of the job; the client reads it as a Job too.
    accepted = response_schema(openapi, "post", "/v1/studies", "202")
    client_only = frozenset(
        {"started_at", "finished_at", "attempts", "error", "result", "origin", "delivery"}
    )
    assert differences(client_schema(Job), accepted, client_only=client_only) == []
    assert differences(client_schema(JobPage), response_schema(openapi, "get", "/v1/studies")) == []


def test_error_body_is_what_the_client_reads(openapi: Schema) -> None:
    responses = openapi["paths"]["/v1/cases"]["post"]["responses"]
    for status in ("400", "413", "415", "422", "503"):
        error = normalise(responses[status]["content"]["application/json"]["schema"], openapi)
        assert {"code", "detail", "request_id"} <= error["required"], status
        assert error["properties"]["code"]["kind"] == "string"
        assert error["properties"]["detail"]["kind"] == "string"
        assert set(error["properties"]) <= {"code", "detail", "request_id", "reasons"}


def test_the_comparison_catches_drift(openapi: Schema) -> None:
    """A renamed field, a dropped nested field and a changed type are all reported."""
    server = response_schema(openapi, "post", "/v1/cases")
    drifted = copy.deepcopy(server)
    drifted["properties"]["ich_prob"] = drifted["properties"].pop("ich_probability")
    drifted["required"] = (drifted["required"] - {"ich_probability"}) | {"ich_prob"}
    slice_schema = drifted["properties"]["slices"]["items"]
    del slice_schema["properties"]["weights"]
    slice_schema["required"].discard("weights")
    drifted["properties"]["timing_ms"]["properties"]["total"] = {"kind": "string", "nullable": False}
    drifted["properties"]["engine"]["nullable"] = True
    problems = differences(client_schema(CaseResult), drifted)
    joined = "\n".join(problems)
    assert "$.ich_prob: sent by the service, unknown to the client" in joined
    assert "$.ich_probability: expected by the client" in joined
    assert "$.ich_probability: required by the client" in joined
    assert "$.slices[*].weights: expected by the client" in joined
    assert "$.timing_ms.total: client number, service string" in joined
    assert "$.engine: the service may send null" in joined
