"""The error contract, in one place: what every error body looks like, which statuses each
operation can answer, and the OpenAPI document saying exactly that.

Every error is `{"detail": "<one readable sentence>"}`; a 422 adds `errors`, one entry per
invalid field, when the request failed schema validation. FastAPI's own 422 document
(`HTTPValidationError`, `detail` an array) would be wrong for these bodies, so it is replaced.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from service.schemas import Message

RETRY_SECONDS = 5
RETRY_AFTER = {"Retry-After": str(RETRY_SECONDS)}


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: body, query or header, then the field path")
    msg: str
    type: str | None = None


class ValidationProblem(BaseModel):
    detail: str = Field(description="what is wrong, in one sentence")
    errors: list[FieldError] = Field(
        default_factory=list, description="per field, when the request failed schema validation"
    )


def _ref(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


_RETRY_HEADER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}
API_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationProblem, "description": "the request is invalid"},
    401: {
        "model": Message,
        "description": "no valid API key (X-API-Key or Authorization: Bearer)",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    503: {
        "model": Message,
        "description": "the database or the checkpoint store is unavailable: retry later",
        "headers": _RETRY_HEADER,
    },
}
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Message, "description": "the request body could not be read"},
    413: {"model": Message, "description": "the request body is larger than the limit"},
}


# Where each path parameter's value comes from: the `id` of what this operation answers.
CREATED_BY = {
    "search_id": ("post", "/api/searches"),
    "checkpoint_id": ("post", "/api/searches/{search_id}/checkpoints"),
}


def install_openapi(app: FastAPI, *, secured: bool) -> None:
    """app.openapi() documents our 422 body everywhere, and 400/413 wherever a request has a
    body (the body limit and the JSON reader answer those before any route runs). An open
    API (no keys configured) documents no security; links tell clients (and the stateful
    fuzzer) which response's `id` goes into which path parameter."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for item in schema.get("paths", {}).values():
            for op in item.values():
                responses = op.setdefault("responses", {})
                if "422" in responses:
                    responses["422"]["content"] = _ref(ValidationProblem.__name__)
                if "requestBody" in op:
                    for code, doc in BODY_ERRORS.items():
                        responses.setdefault(
                            str(code),
                            {"description": doc["description"], "content": _ref("Message")},
                        )
                if not secured:
                    op.pop("security", None)
                    responses.pop("401", None)
        components = schema.get("components", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(unused, None)
        if not secured:
            components.pop("securitySchemes", None)
        _add_links(schema["paths"])
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_links(paths: dict[str, Any]) -> None:
    for param, (method, source) in CREATED_BY.items():
        creator = paths.get(source, {}).get(method)
        if creator is None:
            continue
        links = {
            op["operationId"]: {
                "operationId": op["operationId"],
                "parameters": {
                    param: "$response.body#/id",
                    # the creator's own path parameters carry over where the target has them
                    **{
                        p: f"$request.path.{p}"
                        for p in _path_params(source)
                        if p in _path_params(path)
                    },
                },
            }
            for path, item in paths.items()
            if "{" + param + "}" in path
            for op in item.values()
        }
        for code, response in creator["responses"].items():
            if code in ("200", "201", "202"):
                response["links"] = links


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]
