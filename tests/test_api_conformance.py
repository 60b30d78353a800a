"""The API against its own /openapi.json, with schemathesis (property-based).

Every operation gets generated requests, valid and invalid; each response must not be a
server error and must match the status codes, content types, headers and schemas the
spec declares.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api.app import openapi_document
from tests.helpers import BASE_TS, MQTT_URL
from tests.services import CollectorProcess, free_port, wait_for_port

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def live_api(database_url, tmp_path_factory):
    port = free_port()
    env = {
        "DATABASE_URL": database_url,
        "MQTT_URL": MQTT_URL,
        "PORT": str(port),
        "MQTT_CLIENT_ID": f"conformance-{uuid.uuid4().hex[:8]}",
        "MQTT_TOPIC_PREFIX": f"conformance-{uuid.uuid4().hex[:8]}",
        "MQTT_SESSION_EXPIRY_S": "60",
    }
    proc = CollectorProcess(env, tmp_path_factory.mktemp("api") / "collector.log").start()
    wait_for_port(port, timeout=30)
    yield f"http://127.0.0.1:{port}"
    assert proc.terminate() == 0


@pytest.fixture(scope="module")
def seeded(live_api):

    # Some known devices, so generated ids sometimes hit and sometimes miss.
    httpx.post(
        f"{live_api}/v1/ingest",
        json=[
            {
                "meterId": "a",
                "kwhConsumedAc": 1.0,
                "voltage": 230.0,
                "timestamp": BASE_TS.isoformat(),
            },
            {
                "vehicleId": "a",
                "soc": 50.0,
                "kwhDeliveredDc": 0.9,
                "batteryTemp": 25.0,
                "timestamp": BASE_TS.isoformat(),
            },
        ],
    ).raise_for_status()
    return live_api


@schemathesis.serializer("application/x-ndjson")
def ndjson(_ctx, value) -> bytes:
    """The spec describes an NDJSON body as the array of its lines."""
    items = value if isinstance(value, list) else [value]
    return "\n".join(json.dumps(item) for item in items).encode()


# Requests that are valid by the schema may still be refused by the domain with these:
# 404 an unknown device, 409 a link that would rewrite history, 422 readings or a link
# time the rules refuse (a timestamp in the future, before 2000).
# Invalid requests must be refused with schemathesis's usual 4xx list, plus 207: a batch
# with some invalid readings stores the valid ones and rejects the others item by item
# (the 207 reply names each; a batch with none valid gets 422). test_api_ingest checks
# that the rejected items are reported and that only the valid ones are stored.
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409", "422"]},
            "negative_data_rejection": {
                "expected-statuses": [
                    "207",
                    "400",
                    "401",
                    "403",
                    "404",
                    "405",
                    "406",
                    "409",
                    "413",
                    "415",
                    "422",
                    "428",
                    "429",
                    "5xx",
                ]
            },
        },
    }
)


@schemathesis.check
def partial_batch_names_what_it_rejected(ctx, response, case) -> None:
    """207 stands for "rejected" above only because it is a partial batch: some readings
    stored, and each refused one named with its index and reason."""
    if response.status_code != 207:
        return
    body = response.json()
    assert body["accepted"] >= 1, f"207 with nothing accepted: {body}"
    assert body["rejected"], f"207 that names no rejected reading: {body}"
    assert all(item["reason"] and item["detail"] for item in body["rejected"]), body


# The document the app serves (test_api_system checks /openapi.json is this document).
schema = schemathesis.openapi.from_dict(openapi_document(), config=CONFIG)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_spec(case, seeded):
    case.call_and_validate(base_url=seeded)
