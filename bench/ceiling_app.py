"""The ceiling of bench/http.py: a minimal Starlette app on the collector's own server stack.

The same uvicorn configuration (``collector.http_server.embedded_server``: protocol,
limits, no access log), the same event loop (uvloop) and garbage collector tuning as
``energy-collector run``, answering a small JSON POST (parsed, like a reading) and a small
JSON GET without touching a database: what any endpoint of ours could at most do on this
machine.

    .venv/bin/python bench/ceiling_app.py --port 8100
"""

from __future__ import annotations

try:  # run as a script: take bench/ off sys.path first (bench/_paths.py)
    import _paths
except ModuleNotFoundError:  # imported as bench.<module>: the path is right already
    _paths = None

# isort: split

import argparse
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from collector.http_server import embedded_server, listen
from collector.runtime import run_async, tune_gc
from collector.settings import load_settings

STATUS = {
    "vehicleId": "vehicle-00042",
    "timestamp": "2026-12-06T12:00:00Z",
    "soc": 57.0,
    "kwhDeliveredDc": 0.81,
    "batteryTemp": 31.5,
    "ageSeconds": 12.5,
    "linkedMeterId": "meter-00042",
}


async def ingest(request: Request) -> Response:
    reading = json.loads(await request.body())
    return JSONResponse({"accepted": 1, "rejectedCount": 0, "id": reading.get("vehicleId")})


async def status(request: Request) -> Response:
    return JSONResponse({**STATUS, "vehicleId": request.path_params["vehicleId"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = load_settings({"PORT": str(args.port)}, env_file=None)
    app = Starlette(
        routes=[
            Route("/ingest", ingest, methods=["POST"]),
            Route("/status/{vehicleId}", status, methods=["GET"]),
        ]
    )
    sock = listen(settings.host, settings.port)
    server = embedded_server(app, settings)
    tune_gc()
    run_async(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()
