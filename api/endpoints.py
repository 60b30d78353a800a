"""One description per endpoint, from which both the routes and ``/openapi.json`` are built.

Request and response shapes are pydantic models; their JSON Schemas become the spec's
components, so the spec says exactly what the handlers validate and return.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from api.problems import PROBLEM_MEDIA_TYPE, ProblemError

Handler = Callable[[Request], Awaitable[Response]]
Role = Literal["read", "ingest"]


@dataclass(frozen=True)
class PathParam:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Body:
    """A request body: one schema per media type (a model, or a raw JSON Schema)."""

    content: dict[str, type[BaseModel] | dict[str, Any]]
    description: str = ""


@dataclass(frozen=True)
class Reply:
    description: str
    model: type[BaseModel] | None = None
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    role: Role | None
    responses: dict[int, Reply]
    description: str = ""
    path_params: tuple[PathParam, ...] = ()
    query: type[BaseModel] | None = None
    body: Body | None = None
    #: Shown in the spec (the page routes are not).
    in_schema: bool = True


M = TypeVar("M", bound=BaseModel)


def parse_query(request: Request, model: type[M]) -> M:
    """Validate the query string against ``model``; a 400 problem names every bad parameter."""
    params = dict(request.query_params)
    try:
        # As JSON strings are validated: "10" is a number, "true" is not one.
        return model.model_validate_strings(params, strict=True)
    except ValidationError as exc:
        raise bad_request(exc, "query parameter") from None


def bad_request(exc: ValidationError, what: str) -> ProblemError:
    errors = [
        {"name": ".".join(str(p) for p in e["loc"]) or what, "reason": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(f"{e['name']}: {e['reason']}" for e in errors[:5])
    return ProblemError(400, f"invalid {what}: {summary}", errors=errors)


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "RFC 9457 problem details",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "reason": {"type": "string"}},
                },
            },
        },
    }


def _parameters(ep: Endpoint) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {
            "name": p.name,
            "in": "path",
            "required": True,
            "description": p.description,
            "schema": p.schema,
        }
        for p in ep.path_params
    ]
    if ep.query is not None:
        schema = ep.query.model_json_schema(by_alias=True)
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            param_schema = {k: v for k, v in prop.items() if k not in ("description", "title")}
            params.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in required,
                    "description": prop.get("description", ""),
                    "schema": param_schema,
                }
            )
    return params


def _response(status: int, reply: Reply, ref: Callable[[type[BaseModel]], dict]) -> dict:
    resp: dict[str, Any] = {"description": reply.description}
    if reply.model is not None:
        resp["content"] = {reply.media_type: {"schema": ref(reply.model)}}
    elif status >= 400:
        resp["content"] = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    elif reply.media_type != "application/json":
        resp["content"] = {reply.media_type: {"schema": {"type": "string"}}}
    if reply.headers:
        resp["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in reply.headers.items()
        }
    return resp


def _operation(ep: Endpoint, ref: Callable[[type[BaseModel]], dict]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": ep.handler.__name__,
        "summary": ep.summary,
        "tags": [ep.tag],
    }
    if ep.description:
        op["description"] = ep.description
    if params := _parameters(ep):
        op["parameters"] = params
    if ep.body is not None:
        op["requestBody"] = {
            "required": True,
            "description": ep.body.description,
            "content": {
                media: {"schema": ref(schema) if isinstance(schema, type) else schema}
                for media, schema in ep.body.content.items()
            },
        }
    op["responses"] = {
        str(status): _response(status, reply, ref) for status, reply in sorted(ep.responses.items())
    }
    if ep.role is not None:
        # Tokens are optional (off unless configured): no credentials, or a bearer token.
        op["security"] = [{}, {"bearerAuth": []}]
    return op


def build_openapi(
    endpoints: list[Endpoint], *, title: str, version: str, description: str
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``endpoints``."""
    models: dict[type[BaseModel], None] = {}
    for ep in endpoints:
        models.update({r.model: None for r in ep.responses.values() if r.model is not None})
        if ep.body:
            models.update({m: None for m in ep.body.content.values() if isinstance(m, type)})
    key_map, top = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas = {**top.get("$defs", {}), "Problem": _problem_schema()}

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return key_map[(model, "validation")]

    paths: dict[str, Any] = {}
    for ep in endpoints:
        if ep.in_schema:
            paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep, ref)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
