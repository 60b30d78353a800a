"""`energy-collector import`: history from CSV and NDJSON files, validated, exactly once."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers import BASE_TS, iso, meter, vehicle

pytestmark = pytest.mark.services


def run_import(path: Path, database_url: str, *args: str, **env: str):
    return subprocess.run(
        [sys.executable, "-m", "collector", "import", str(path), "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=path.parent,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": database_url, "LOG_LEVEL": "warning", **env},
    )


def good_rows(n: int = 120) -> list[dict]:
    """Two hours of one meter and one vehicle, one reading a minute."""
    rows = []
    for i in range(n):
        ts = BASE_TS + timedelta(minutes=i)
        rows.append(meter("m-imp", ts, kwh=0.1 + i / 1000))
        rows.append(vehicle("v-imp", ts, soc=20 + i / 10, kwh=0.09, temp=25 + i / 100))
    return rows


BAD_LINES = [
    (b"not json at all", "invalid_json"),
    (b"[1, 2]", "invalid_shape"),
    (json.dumps({"deviceId": "x", "timestamp": iso(BASE_TS)}).encode(), "unknown_kind"),
    (json.dumps({"meterId": "m-bad", "voltage": 230, "timestamp": iso(BASE_TS)}), "missing_field"),
    (json.dumps({**meter("m-bad", BASE_TS), "kwhConsumedAc": -1}), "out_of_range"),
    (json.dumps({**vehicle("v-bad", BASE_TS), "soc": 101}), "out_of_range"),
    (json.dumps({**meter("m-bad", BASE_TS), "voltage": "230"}), "invalid_type"),
    (json.dumps({**meter("m bad!", BASE_TS)}), "invalid_id"),
    (
        json.dumps({**meter("m-bad", BASE_TS), "timestamp": "2026-02-09T10:00:00"}),
        "invalid_timestamp",
    ),
    (json.dumps(meter("m-bad", datetime.now(UTC) + timedelta(days=1))), "future_timestamp"),
]


def write_ndjson(path: Path, rows: list[dict], bad: list = ()) -> dict[int, str]:
    """Good rows with the bad lines spread among them; returns the expected reasons by line."""
    lines: list[tuple[bytes, str | None]] = [(json.dumps(r).encode(), None) for r in rows]
    for k, (line, reason) in enumerate(bad):
        lines.insert(3 + k * 7, (line if isinstance(line, bytes) else line.encode(), reason))
    path.write_bytes(b"".join(line + b"\n" for line, _ in lines))
    return {number: reason for number, (_, reason) in enumerate(lines, 1) if reason}


async def history(db) -> tuple[int, int]:
    return (
        await db.fetchval("SELECT count(*) FROM meter_readings"),
        await db.fetchval("SELECT count(*) FROM vehicle_readings"),
    )


async def rollups_match_history(db) -> None:
    """The hourly rollups say exactly what the raw rows say."""
    mismatched = await db.fetchval(
        """SELECT count(*) FROM (
             SELECT meter_id, date_trunc('hour', ts, 'UTC') AS hour, count(*) AS n,
                    sum(kwh_consumed_ac) AS kwh
             FROM meter_readings GROUP BY 1, 2) raw
           FULL JOIN meter_hourly r USING (meter_id, hour)
           WHERE r.readings IS DISTINCT FROM raw.n OR abs(r.kwh_sum - raw.kwh) > 1e-9
              OR raw.n IS NULL"""
    )
    assert mismatched == 0
    mismatched = await db.fetchval(
        """SELECT count(*) FROM (
             SELECT vehicle_id, date_trunc('hour', ts, 'UTC') AS hour, count(*) AS n,
                    sum(soc) AS soc
             FROM vehicle_readings GROUP BY 1, 2) raw
           FULL JOIN vehicle_hourly r USING (vehicle_id, hour)
           WHERE r.readings IS DISTINCT FROM raw.n OR abs(r.soc_sum - raw.soc) > 1e-9
              OR raw.n IS NULL"""
    )
    assert mismatched == 0


async def test_ndjson_good_and_bad_rows_then_the_same_file_again(tmp_path, db, database_url):
    path = tmp_path / "history.ndjson"
    expected_reasons = write_ndjson(path, good_rows(), BAD_LINES)
    assert len(expected_reasons) == len(BAD_LINES)

    first = await asyncio.to_thread(run_import, path, database_url)
    assert first.returncode == 3, first.stderr
    assert "250 rows" in first.stdout
    assert "120 meter and 120 vehicle readings stored, 0 already stored, 10 rejected" in (
        first.stdout
    )
    report = tmp_path / "history.ndjson.rejected.csv"
    assert f"rows in {report}" in first.stdout
    with report.open() as f:
        rejected = {int(r["line"]): r["reason"] for r in csv.DictReader(f)}
    assert rejected == expected_reasons

    assert await history(db) == (120, 120)
    current = await db.fetchrow("SELECT ts, soc FROM vehicle_current WHERE vehicle_id = 'v-imp'")
    assert current["ts"] == BASE_TS + timedelta(minutes=119)
    assert current["soc"] == 20 + 119 / 10
    await rollups_match_history(db)
    assert await db.fetchval("SELECT count(*) FROM rejected_messages") == 0  # live traffic only
    # Old history gets partitions of its own (its month's: it is older than
    # PARTITION_DAILY_DAYS); nothing went to the default partition.
    assert await db.fetchval("SELECT count(*) FROM meter_readings_default") == 0
    assert await db.fetchval("SELECT count(*) FROM meter_readings_m202602") == 120

    again = await asyncio.to_thread(run_import, path, database_url)
    assert again.returncode == 3
    assert "0 meter and 0 vehicle readings stored, 240 already stored, 10 rejected" in (
        again.stdout
    )
    assert await history(db) == (120, 120)
    await rollups_match_history(db)


async def test_a_clean_csv_file_mixing_meters_and_vehicles(tmp_path, db, database_url):
    path = tmp_path / "export.csv"
    fields = ["meterId", "vehicleId", "kwhConsumedAc", "voltage", "soc", "kwhDeliveredDc"]
    fields += ["batteryTemp", "timestamp"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for row in good_rows(90):
            writer.writerow(row)
    result = await asyncio.to_thread(run_import, path, database_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "90 meter and 90 vehicle readings stored" in result.stdout
    assert not (tmp_path / "export.csv.rejected.csv").exists()
    assert await history(db) == (90, 90)
    row = await db.fetchrow(
        "SELECT kwh_consumed_ac, voltage FROM meter_readings WHERE ts = $1", BASE_TS
    )
    assert (row["kwh_consumed_ac"], row["voltage"]) == (0.1, 230.5)
    await rollups_match_history(db)


async def test_csv_rows_that_cannot_be_readings(tmp_path, db, database_url):
    path = tmp_path / "odd.csv"
    path.write_text(
        "meterId,kwhConsumedAc,voltage,timestamp\n"
        "m-csv,1.5,230,2026-02-09T10:00:00Z\n"
        "m-csv,lots,230,2026-02-09T10:01:00Z\n"  # not a number
        "m-csv,1.5,230,2026-02-09T10:02:00Z,surplus\n"  # a cell too many
        "m-csv,,230,2026-02-09T10:03:00Z\n"  # empty energy
        "m-csv,1.5,230,2026-02-09T10:04:00+01:00\n"
    )
    result = await asyncio.to_thread(
        run_import, path, database_url, "--rejects", str(tmp_path / "why.csv")
    )
    assert result.returncode == 3
    with (tmp_path / "why.csv").open() as f:
        rejected = {int(r["line"]): r["reason"] for r in csv.DictReader(f)}
    assert rejected == {3: "invalid_type", 4: "invalid_shape", 5: "missing_field"}
    stored = await db.fetch("SELECT ts FROM meter_readings ORDER BY ts")
    assert [r["ts"] for r in stored] == [BASE_TS - timedelta(minutes=56), BASE_TS]


async def test_importing_old_history_never_moves_current_state_back(tmp_path, db, database_url):
    newer = tmp_path / "newer.ndjson"
    write_ndjson(newer, [meter("m-late", BASE_TS + timedelta(days=1), kwh=9.0)])
    assert (await asyncio.to_thread(run_import, newer, database_url)).returncode == 0
    older = tmp_path / "older.ndjson"
    write_ndjson(older, [meter("m-late", BASE_TS, kwh=1.0)])
    assert (await asyncio.to_thread(run_import, older, database_url)).returncode == 0
    current = await db.fetchrow("SELECT ts, kwh_consumed_ac FROM meter_current")
    assert (current["ts"], current["kwh_consumed_ac"]) == (BASE_TS + timedelta(days=1), 9.0)
    assert await history(db) == (2, 0)


async def test_rows_past_the_retention_are_rejected(tmp_path, db, database_url):
    path = tmp_path / "old.ndjson"
    recent = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    write_ndjson(path, [meter("m-ret", BASE_TS), meter("m-ret", recent)])
    result = await asyncio.to_thread(run_import, path, database_url, RETENTION_DAYS="30")
    assert result.returncode == 3
    assert "1 out_of_range" in result.stdout
    assert "older than RETENTION_DAYS=30" in (path.parent / "old.ndjson.rejected.csv").read_text()
    assert await history(db) == (1, 0)


def test_an_import_that_cannot_run_says_why(tmp_path, database_url):
    missing = run_import(tmp_path / "nothing.ndjson", database_url)
    assert missing.returncode == 1
    assert "is not a readable file" in missing.stderr
    path = tmp_path / "one.ndjson"
    write_ndjson(path, [meter("m-x", BASE_TS)])
    no_db = run_import(path, "postgresql://postgres@127.0.0.1:1/energy")
    assert no_db.returncode == 1
    assert "cannot prepare the database" in no_db.stderr


def test_a_csv_header_naming_a_field_twice_is_refused(tmp_path, database_url):
    path = tmp_path / "twice.csv"
    path.write_text(
        "meterId,kwhConsumedAc,voltage,timestamp,meterId\nm-1,1,230,2026-02-09T10:00:00Z,m-2\n"
    )
    result = run_import(path, database_url)
    assert result.returncode == 1
    assert "the CSV header names 'meterId' more than once" in result.stderr
