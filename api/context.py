"""What handlers get from the application: pool, settings and the daemon's parts."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from api.auth import TokenAuth
from api.fleet_view import FleetViews
from api.problems import ProblemError
from api.read_pool import FairPool
from api.replica import DatabaseRole
from collector.health import DaemonHealth
from collector.ingest.readings import DEVICE_ID_PATTERN
from collector.settings import Settings
from collector.settlement.sites import Sites
from collector.sources.http.source import HttpIngest
from collector.sources.mappings.preview import SourcesDesk

_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class ApiContext:
    settings: Settings
    pool: FairPool
    auth: TokenAuth
    registry: CollectorRegistry
    ingest: HttpIngest | None
    daemon_health: Callable[[], DaemonHealth] | None
    openapi: dict[str, Any]
    version: str
    fleet: FleetViews
    role: DatabaseRole
    #: The payload mappings, shown and tried (None: no daemon gave any).
    sources: SourcesDesk | None = None
    #: The sites of SITES_FILE (none when it is not set).
    sites: Sites = field(default_factory=Sites)


def context(request: Request) -> ApiContext:
    return request.state.ctx


def device_id(request: Request, name: str) -> str:
    """A device id from the path; 400 if it cannot be one."""
    value = request.path_params[name]
    if not _DEVICE_ID.match(value):
        raise ProblemError(
            400,
            f"invalid {name} {value!r}: 1-64 of A-Z a-z 0-9 . _ : - "
            "starting with a letter or digit",
        )
    return value


def reply(model: BaseModel, status: int = 200) -> Response:
    """``model`` as JSON, serialized by pydantic's own (Rust) serializer straight to bytes:
    a page of 100 vehicles takes 112 µs instead of 314 with ``JSONResponse(model_dump())``."""
    return Response(
        model.__pydantic_serializer__.to_json(model), status, media_type="application/json"
    )
