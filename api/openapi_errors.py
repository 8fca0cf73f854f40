"""The OpenAPI document says what the gateway really answers on a validation error.

FastAPI documents a 422 ``HTTPValidationError`` (``{"detail": [...]}``) on every route with parameters, but
the gateway answers every error with its own body (``api.errors``: ``code``, ``detail``, ``request_id``,
plus ``errors`` for invalid parameters). Clients generated from the document, and schemathesis, would
otherwise expect a body that never comes. Every reference to ``HTTPValidationError`` is pointed at
``ErrorBody`` and the two unused FastAPI schemas are dropped.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.schemas import ErrorBody

_FASTAPI_SCHEMAS = ("HTTPValidationError", "ValidationError")
_REFS = "#/components/schemas/"


def _point_at(node: Any, old: str, new: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and value == old:
                node[key] = new
            else:
                _point_at(value, old, new)
    elif isinstance(node, list):
        for item in node:
            _point_at(item, old, new)


def install_error_schema(app: FastAPI) -> None:
    """Make ``app.openapi()`` document ``ErrorBody`` wherever FastAPI put its own 422 body."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            openapi_version=app.openapi_version,
            description=app.description,
            routes=app.routes,
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        if "ErrorBody" not in schemas:
            schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template=_REFS + "{model}")
        _point_at(document.get("paths", {}), f"{_REFS}HTTPValidationError", f"{_REFS}ErrorBody")
        for name in _FASTAPI_SCHEMAS:
            schemas.pop(name, None)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
