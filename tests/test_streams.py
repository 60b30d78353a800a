"""The stream catalogue names only tables and columns the migrations made."""

from __future__ import annotations

import pytest

from collector.ingest.store import PREVIOUS_COLUMNS, REGISTER_COLUMNS, rollup_columns
from collector.ingest.streams import STREAMS, Stream, of_object, stream_of

pytestmark = pytest.mark.services


def expected(t: Stream) -> dict[str, set[str]]:
    """Every column the catalogue (and what is generated from it) says each table has."""
    history = {t.device, "ts", *t.values, "received_at", t.register, *REGISTER_COLUMNS}
    current = history | {*PREVIOUS_COLUMNS, "version", "updated_at"}
    hourly = {t.device, "hour", *rollup_columns(t)}
    return {t.readings: history, t.current: current, t.hourly: hourly}


@pytest.mark.parametrize("name", list(STREAMS))
async def test_every_table_and_column_of_the_catalogue_exists(db, name):
    for table, columns in expected(STREAMS[name]).items():
        found = {
            r["column_name"]
            for r in await db.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = $1",
                table,
            )
        }
        assert found, f"no table {table}"
        assert columns - found == set(), table


def test_a_stream_is_told_by_its_model_and_by_its_id_field():
    for stream in STREAMS.values():
        assert of_object({stream.id_field: "x"}) is stream
        assert stream.energy in stream.measures
        assert stream.metrics[stream.energy.metric] == stream.energy.column
    assert of_object({"meterId": "a", "vehicleId": "b"}) is None
    assert of_object([1]) is None
    model = STREAMS["meter"].model
    reading = model(meterId="m", kwhConsumedAc=1.0, voltage=230.0, timestamp="2026-01-01T00:00Z")
    assert stream_of(reading) is STREAMS["meter"]
