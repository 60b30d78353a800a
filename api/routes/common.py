"""What several route modules describe the same way: path parameters, common replies,
the analytics window."""

from __future__ import annotations

from datetime import datetime

from starlette.requests import Request

from api.endpoints import PathParam, Reply, parse_query
from api.models import WindowQuery
from api.policy import resolve_window
from api.problems import ProblemError
from collector.ingest.readings import DEVICE_ID_PATTERN
from collector.ingest.streams import STREAMS

ID_SCHEMA = {"type": "string", "pattern": DEVICE_ID_PATTERN, "maxLength": 64}
METER_ID = PathParam("meterId", "a meter id, as in the payloads", ID_SCHEMA)
VEHICLE_ID = PathParam("vehicleId", "a vehicle id, as in the payloads", ID_SCHEMA)
#: A device's kind in a path (registers, alerts), with the device's id beside it.
KINDS = tuple(STREAMS)
KIND = PathParam("kind", " or ".join(KINDS), {"type": "string", "enum": list(KINDS)})
DEVICE_ID = PathParam("deviceId", "the meter's or the vehicle's id", ID_SCHEMA)
BAD_REQUEST = {400: Reply("invalid parameter")}
UNAUTHORIZED = {401: Reply("a token is required or not valid"), 403: Reply("token not allowed")}
UNPROCESSABLE = {422: Reply("window reversed, over 366 days, or too many buckets")}
WINDOW_NOTE = "The window is the last 24 h unless `from` / `to` say otherwise."


def window(request: Request) -> tuple[datetime, datetime]:
    """The request's ``[from, to)`` (400 if malformed, 422 if the rules refuse it)."""
    query = parse_query(request, WindowQuery)
    return resolve_window(query.from_, query.to)


def device_kind(request: Request) -> str:
    """The ``kind`` path parameter; 400 unless it is meter or vehicle."""
    kind = request.path_params["kind"]
    if kind not in KINDS:
        raise ProblemError(400, f"invalid kind {kind!r}: {' or '.join(KINDS)}")
    return kind


def json_media_type(request: Request, accepted: set[str]) -> str:
    """The request's media type, which must be one of ``accepted``: a write without one
    (a browser's no-cors fetch or sendBeacon sends none, or text/plain) is refused (415)."""
    names = " or ".join(sorted(accepted & {"application/json", "application/x-ndjson"}))
    header = request.headers.get("content-type")
    if header is None:
        raise ProblemError(415, f"a Content-Type is required: {names}")
    media_type = header.split(";")[0].strip().lower()
    if media_type not in accepted:
        raise ProblemError(415, f"send {names}, not {media_type!r}")
    return media_type
