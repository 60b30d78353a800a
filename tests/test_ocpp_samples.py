"""Meter values as real chargers send them, read into samples (pure: no services)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from collector.ingest.readings import Reason
from collector.sources.ocpp.naming import meter_of
from collector.sources.ocpp.samples import read_meter_values

T = "2026-12-08T10:00:00Z"
AT = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)


def one(*sampled: dict[str, Any], ts: str = T) -> list[dict[str, Any]]:
    return [{"timestamp": ts, "sampledValue": list(sampled)}]


@pytest.mark.parametrize(
    ("meter_value", "register_kwh"),
    [
        pytest.param(one({"value": "1500"}), 1.5, id="no-measurand-is-the-register-in-Wh"),
        pytest.param(
            one({"value": 1500, "measurand": "Energy.Active.Import.Register"}),
            1.5,
            id="a-json-number-openevse",
        ),
        pytest.param(one({"value": "2.5", "unit": "kWh"}), 2.5, id="kWh"),
        pytest.param(one({"value": "2.5", "unit": "KWh"}), 2.5, id="kWh-in-another-case"),
        pytest.param(
            one({"value": "2.5", "unitOfMeasure": {"unit": "Wh", "multiplier": 3}}),
            2.5,
            id="201-unit-of-measure-with-a-multiplier",
        ),
        pytest.param(
            one(
                {"value": "100", "phase": "L1"},
                {"value": "200", "phase": "L2-N"},
                {"value": "300", "phase": "L3"},
            ),
            0.6,
            id="phases-summed",
        ),
        pytest.param(
            one({"value": "100", "phase": "L1"}, {"value": "900"}),
            0.9,
            id="the-total-wins-over-phases",
        ),
        pytest.param(one({"value": "700", "location": "EV"}), None, id="not-the-meter-location"),
        pytest.param(one({"value": "55", "measurand": "SoC"}), None, id="soc-alone-no-reading"),
        pytest.param(one(), None, id="empty-sampled-value"),
    ],
)
def test_the_register_of_a_meter_value(meter_value: Any, register_kwh: float | None) -> None:
    samples, problems = read_meter_values(meter_value)
    assert problems == []
    assert [s.register_kwh for s in samples] == [
        pytest.approx(register_kwh) if register_kwh else None
    ]


def test_an_object_instead_of_an_array_huawei() -> None:
    samples, _ = read_meter_values({"timestamp": T, "sampledValue": {"value": "10"}})
    assert [(s.ts, s.register_kwh) for s in samples] == [(AT, 0.01)]


def test_offsets_voltage_and_soc() -> None:
    local = AT.astimezone(timezone(timedelta(hours=10))).isoformat()
    samples, _ = read_meter_values(
        one(
            {"value": "5000"},
            {"value": "229", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
            {"value": "231", "measurand": "Voltage", "phase": "L2-N"},
            {"value": "62", "measurand": "SoC", "unit": "Percent"},
            ts=local,
        )
    )
    assert local.endswith("+10:00")
    assert samples[0].ts == AT and samples[0].voltage == 230 and samples[0].soc == 62


def test_signed_data_is_kept_verbatim() -> None:
    samples, _ = read_meter_values(
        one(
            {"value": "1200"},
            {"value": "OCMF|{\"RD\":[]}|{\"SD\":\"30\"}", "format": "SignedData"},
            {"value": "1200", "measurand": "Energy.Active.Import.Register",
             "signedMeterValue": {"signedMeterData": "b64==", "signingMethod": "ECDSA",
                                  "encodingMethod": "OCMF", "publicKey": "pk"}},
        )
    )  # fmt: skip
    assert samples[0].register_kwh == 1.2
    assert [(s.data, s.encoding) for s in samples[0].signed] == [
        ('OCMF|{"RD":[]}|{"SD":"30"}', None),
        ("b64==", "OCMF"),
    ]


@pytest.mark.parametrize(
    ("meter_value", "reason", "detail"),
    [
        (
            one({"value": "1"}, ts="1970-01-01T00:00:07Z"),
            Reason.INVALID_TIMESTAMP,
            "clock was not set",
        ),
        (one({"value": "1"}, ts="yesterday"), Reason.INVALID_TIMESTAMP, "ISO 8601"),
        ([{"sampledValue": [{"value": "1"}]}], Reason.INVALID_TIMESTAMP, "is required"),
        (one({"value": "n/a"}), Reason.INVALID_TYPE, "'n/a' is not a number"),
        (one({"value": "NaN"}), Reason.INVALID_TYPE, "not a finite number"),
        (one({"value": True}), Reason.INVALID_TYPE, "not a number"),
        (one({"value": "5", "unit": "varh"}), Reason.INVALID_TYPE, "unit 'varh' is not Wh or kWh"),
        (["not an object"], Reason.INVALID_SHAPE, "a meterValue is a JSON object"),
        (one("not an object"), Reason.INVALID_SHAPE, "a sampledValue is a JSON object"),  # type: ignore[arg-type]
    ],
)
def test_what_cannot_be_read_is_refused_with_a_reason(
    meter_value: Any, reason: Reason, detail: str
) -> None:
    _, problems = read_meter_values(meter_value)
    assert [p.reason for p in problems] == [reason]
    assert detail in problems[0].detail


def test_one_bad_value_never_costs_the_others() -> None:
    samples, problems = read_meter_values(
        one({"value": "n/a", "measurand": "Voltage"}, {"value": "3000"})
        + one({"value": "3100"}, ts="2026-12-08T10:01:00Z")
    )
    assert [s.register_kwh for s in samples] == [3.0, 3.1]
    assert len(problems) == 1


def test_a_connector_is_a_meter() -> None:
    assert meter_of("cp-01", 2) == "cp-01-2"
