"""Sites, device-days, balances and exports against Python sums over the raw readings:
DST changes both ways, a zone with a 45-minute offset, a gap, a reset and a replacement
inside a day, readings shuffled and late; exports streamed with their manifest."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import random
import tracemalloc
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pyarrow.parquet as pq
import pytest

from collector.process import build_daemon
from collector.settings import load_settings
from collector.settlement.days import device_days
from collector.settlement.export import ExportRequest, csv_chunks, export_rows, manifest_for
from collector.settlement.sites import Site, Sites, SitesError, load_sites, parse_sites
from tests.helpers import eventually

pytestmark = pytest.mark.services

BERLIN, KATHMANDU = ZoneInfo("Europe/Berlin"), ZoneInfo("Asia/Kathmandu")
SITES = """
[[site]]
id = "ber"
name = "Depot Berlin"
tz = "Europe/Berlin"
main_meter = "ber-main"
members = ["ber-cp-*", "ber-sub"]
price_per_kwh = 0.32
currency = "EUR"
loss_tolerance_pct = 3.0

[[site]]
id = "ktm"
tz = "Asia/Kathmandu"
members = ["ktm-*"]
"""
#: Local days around the spring (2026-03-29: 23 h) and autumn (2026-10-25: 25 h) changes.
SPRING = [date(2026, 3, 28) + timedelta(days=i) for i in range(3)]
AUTUMN = [date(2026, 10, 24) + timedelta(days=i) for i in range(3)]
STEP = timedelta(minutes=10)


def local(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    return (
        datetime.combine(day, time(), zone).astimezone(UTC),
        datetime.combine(day + timedelta(days=1), time(), zone).astimezone(UTC),
    )


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Fleet:
    """The readings sent, and what each books (the Python side of every comparison)."""

    def __init__(self) -> None:
        self.rng = random.Random(7)
        self.payloads: list[dict] = []
        self.booked: dict[str, list[tuple[datetime, float]]] = defaultdict(list)

    def interval(self, meter: str, start: datetime, end: datetime, step: timedelta,
                 skip: tuple[datetime, datetime] | None = None) -> None:  # fmt: skip
        ts = start
        while ts < end:
            if not (skip and skip[0] <= ts < skip[1]):
                kwh = round(self.rng.uniform(0, 0.5), 6)
                self.payloads.append({"meterId": meter, "kwhConsumedAc": kwh, "timestamp": iso(ts)})
                self.booked[meter].append((ts, kwh))
            ts += step

    def register(self, meter: str, start: datetime, end: datetime, *, reset_at: datetime,
                 replaced_at: datetime | None = None) -> dict | None:  # fmt: skip
        """A register every STEP; restarts from 0 at ``reset_at``; a new register (from
        0) at ``replaced_at``, recorded as a replacement (returned)."""
        level, ts, first, replacement = 1000.0, start, True, None
        while ts < end:
            step = round(self.rng.uniform(0.05, 0.4), 3)
            if ts == reset_at:
                level = step  # the register restarted from 0 and counted `step` since
            elif replaced_at is not None and ts == replaced_at + STEP:
                replacement = {"at": iso(replaced_at + STEP / 2), "finalKwh": level,
                               "startKwh": 0.0}  # fmt: skip
                level = step
            else:
                level = round(level + step, 3)
            self.payloads.append({"meterId": meter, "kwhRegisterAc": level, "timestamp": iso(ts)})
            self.booked[meter].append((ts, 0.0 if first else step))
            first = False
            ts += STEP
        return replacement

    def day_kwh(self, meter: str, day: date, zone: ZoneInfo) -> float:
        lo, hi = local(day, zone)
        return sum(kwh for ts, kwh in self.booked[meter] if lo <= ts < hi)


@pytest.fixture
async def site_api(start_collector, db, tmp_path: Path):
    sites_file = tmp_path / "sites.toml"
    sites_file.write_text(SITES)
    service = await start_collector(sites_file=str(sites_file), alerts_enabled=False)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{service.http_port}", timeout=60
    ) as api:
        api.service = service  # type: ignore[attr-defined]
        yield api


async def load(api: httpx.AsyncClient, fleet: Fleet) -> None:
    payloads = fleet.payloads[:]
    random.Random(3).shuffle(payloads)
    late, now = payloads[: len(payloads) // 5], payloads[len(payloads) // 5 :]
    for batch in (now, late):  # a fifth arrives after the rest: late readings
        body = "\n".join(json.dumps(p) for p in batch)
        r = await api.post("/v1/ingest/meter", content=body,
                           headers={"content-type": "application/x-ndjson"})  # fmt: skip
        assert r.status_code == 200, r.text


async def test_device_days_are_exact_in_local_days(site_api, db) -> None:
    fleet = Fleet()
    replacements = []
    for days in (SPRING, AUTUMN):
        start, end = local(days[0], BERLIN)[0], local(days[-1], BERLIN)[1]
        fleet.interval("ber-main", start, end, STEP)
        gap_day = local(days[1], BERLIN)[0] + timedelta(hours=10)  # 3 hours without readings
        fleet.interval("ber-sub", start, end, STEP, skip=(gap_day, gap_day + timedelta(hours=3)))
        noon = local(days[1], BERLIN)[0] + timedelta(hours=12)
        replacement = fleet.register(
            f"ber-cp-{days[0].month}", start, end, reset_at=noon - timedelta(hours=4),
            replaced_at=noon + timedelta(hours=4),
        )  # fmt: skip
        replacements.append((f"ber-cp-{days[0].month}", replacement))
    k_start, k_end = local(SPRING[0], KATHMANDU)[0], local(SPRING[-1], KATHMANDU)[1]
    fleet.interval("ktm-1", k_start, k_end, timedelta(minutes=15))
    fleet.interval("no-site-1", k_start, k_end, timedelta(minutes=30))
    for meter, replacement in replacements:
        r = await site_api.post(f"/v1/registers/meter/{meter}/replacements", json=replacement)
        assert r.status_code == 201, r.text
    await load(site_api, fleet)
    await eventually(
        lambda: db.fetchval("SELECT count(*) FROM meter_readings"),
        lambda n: n == len(fleet.payloads),
    )
    # the rebooker books the replacements' neighbourhoods again in the background
    await eventually(
        lambda: db.fetchval(
            "SELECT count(*) FROM meter_readings WHERE register_quality = 'replaced'"
        ),
        lambda n: n == 2,
    )

    for days in (SPRING, AUTUMN):
        got = (await site_api.get("/v1/sites/ber/days", params={
            "from": days[0].isoformat(), "to": (days[-1] + timedelta(days=1)).isoformat()
        })).json()["days"]  # fmt: skip
        # every member, also on days it sent nothing (the other period's charger)
        assert {(d["deviceId"], d["day"]) for d in got} == {
            (m, d.isoformat()) for m in ("ber-main", "ber-sub", "ber-cp-3", "ber-cp-10")
            for d in days
        }  # fmt: skip
        for d in got:
            day = date.fromisoformat(d["day"])
            if d["deviceId"].startswith("ber-cp") and d["deviceId"] != f"ber-cp-{days[0].month}":
                assert (d["kwh"], d["readings"], d["coverage"]) == (0, 0, 0)
                assert (
                    d["gapMinutes"]
                    == {date(2026, 3, 29): 23, date(2026, 10, 25): 25}.get(day, 24) * 60
                )  # a day without data is all gap, never filled
                continue
            assert d["kwh"] == pytest.approx(fleet.day_kwh(d["deviceId"], day, BERLIN), abs=1e-6)
            hours = datetime.fromisoformat(d["end"]) - datetime.fromisoformat(d["start"])
            assert hours == timedelta(
                hours={date(2026, 3, 29): 23, date(2026, 10, 25): 25}.get(day, 24)
            )
            assert d["cost"] == pytest.approx(d["kwh"] * 0.32, abs=1e-6)
            assert d["currency"] == "EUR" and d["provisional"] is False
            gap = d["deviceId"] == "ber-sub" and day == days[1]
            assert d["gapMinutes"] == (180 if gap else 0), d
            day_hours = hours.total_seconds() / 3600
            assert d["coverage"] == pytest.approx(1 - 3 / day_hours if gap else 1.0, abs=1e-3), d
            register_day = d["deviceId"].startswith("ber-cp") and day == days[1]
            assert d["resets"] == (1 if register_day else 0), d
            assert d["replaced"] == (1 if register_day else 0), d

    # a zone 45 minutes off UTC: its days start at 18:15 UTC
    got = (await site_api.get("/v1/sites/ktm/days", params={
        "from": SPRING[0].isoformat(), "to": (SPRING[-1] + timedelta(days=1)).isoformat()
    })).json()["days"]  # fmt: skip
    assert [d["day"] for d in got] == [d.isoformat() for d in SPRING]
    for d in got:
        assert datetime.fromisoformat(d["start"]).astimezone(UTC).minute == 15
        expected = fleet.day_kwh("ktm-1", date.fromisoformat(d["day"]), KATHMANDU)
        assert d["kwh"] == pytest.approx(expected, abs=1e-6)
        assert d["coverage"] == 1.0 and d["cost"] is None

    # the same days through the export: the CSV adds up, the manifest hashes its bytes
    params = {"from": SPRING[0].isoformat(), "to": (SPRING[-1] + timedelta(days=1)).isoformat()}
    response = await site_api.get("/v1/exports/device-days.csv", params=params)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    manifest = (await site_api.get("/v1/exports/device-days.manifest.json", params=params)).json()
    assert manifest["rows"] == len(rows)
    assert manifest["sha256"] == hashlib.sha256(response.content).hexdigest()
    by_device = defaultdict(float)
    for row in rows:
        by_device[row["device_id"]] += float(row["kwh"])
        assert (
            row["tz"]
            == {"ber": "Europe/Berlin", "ktm": "Asia/Kathmandu", "": "UTC"}[row["site_id"]]
        )
    for meter, zone in (("ber-main", BERLIN), ("ktm-1", KATHMANDU), ("no-site-1", UTC)):
        expected = sum(fleet.day_kwh(meter, day, zone) for day in SPRING)
        assert by_device[meter] == pytest.approx(expected, abs=1e-6), meter
    # and as Parquet: the same rows, typed, and its manifest hashes its bytes
    response = await site_api.get("/v1/exports/device-days.parquet", params=params)
    assert response.status_code == 200, response.text
    table = pq.read_table(io.BytesIO(response.content))
    assert table.num_rows == len(rows)
    assert str(table.schema.field("start").type) == "timestamp[us, tz=UTC]"
    assert sum(table.column("kwh").to_pylist()) == pytest.approx(
        sum(float(r["kwh"]) for r in rows), abs=1e-9
    )
    manifest = (await site_api.get("/v1/exports/device-days.manifest.json",
                                   params={**params, "format": "parquet"})).json()  # fmt: skip
    assert manifest["format"] == "parquet" and manifest["rows"] == len(rows)
    assert manifest["sha256"] == hashlib.sha256(response.content).hexdigest()

    # the dashboard: the site (members' days, balance, export links), a device's days
    page = (await site_api.get("/dashboard/sites/ber")).text
    assert "Depot Berlin" in page and "/v1/exports/device-days.csv?" in page
    assert 'href="/dashboard/sites/ber"' in (await site_api.get("/dashboard")).text

    # the balance: main against members, per local hour; the gap hours are incomplete
    day = SPRING[1]
    lo, hi = local(day, BERLIN)
    balance = (await site_api.get("/v1/sites/ber/balance", params={
        "from": iso(lo), "to": iso(hi), "bucket": "hour"
    })).json()  # fmt: skip
    assert len(balance["rows"]) == 23
    for row in balance["rows"]:
        start = datetime.fromisoformat(row["start"])
        end = datetime.fromisoformat(row["end"])
        main = sum(k for ts, k in fleet.booked["ber-main"] if start <= ts < end)
        members = sum(
            k for m in ("ber-sub", "ber-cp-3") for ts, k in fleet.booked[m] if start <= ts < end
        )
        assert row["mainKwh"] == pytest.approx(main, abs=1e-6)
        assert row["membersKwh"] == pytest.approx(members, abs=1e-6)
        assert row["untrackedKwh"] == pytest.approx(main - members, abs=1e-6)
        in_gap = lo + timedelta(hours=10) <= start < lo + timedelta(hours=13)
        assert row["complete"] is not in_gap, row


def test_a_bad_sites_file_is_one_line_naming_the_site_and_the_key(tmp_path: Path) -> None:
    cases = {
        '[[site]]\nid = "a"\ntz = "Mars/Base"\n': "site 'a': key 'tz'",
        '[[site]]\nid = "a"\nprice_per_kwh = 0.3\n': "site 'a': key 'currency'",
        '[[site]]\nid = "a"\ncolour = "red"\n': "site 'a': key 'colour': is not a site key",
        '[[site]]\nid = "a"\nmembers = ["m1"]\n[[site]]\nid = "b"\nmain_meter = "m1"\n':
            "site 'b': key 'members': device 'm1' is already in site 'a'",
        '[[site]]\nname = "no id"\n': "site #1: key 'id': is required",
    }  # fmt: skip
    for text, message in cases.items():
        path = tmp_path / "sites.toml"
        path.write_text(text)
        with pytest.raises(SitesError) as info:
            load_sites(load_settings({"SITES_FILE": str(path)}, env_file=None))
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_members_by_id_or_pattern_and_one_site_per_device() -> None:
    sites = parse_sites(
        [{"id": "a", "main_meter": "a-main", "members": ["cp-0?-*", "sub"]}], "test"
    )
    assert sites.of("cp-01-1").id == "a" and sites.of("a-main").id == "a"
    assert sites.of("cp-1-1") is None and sites.of("subway") is None
    assert not sites.get("a").has("a-main")  # the main meter is the other side


async def test_an_export_streams_in_bounded_memory(db) -> None:
    """Device-days are made and written a day at a time: the memory an export takes does
    not grow with its window (4 days against 24 of 1,000 meters), and stays below the bytes
    it writes (an export built whole would hold at least those)."""
    await db.execute(
        """INSERT INTO meter_current (meter_id, ts, kwh_consumed_ac, voltage, received_at)
           SELECT 'bulk-' || g, '2026-01-01Z', 0, 230, now() FROM generate_series(1, 1000) g"""
    )
    sites = Sites((Site(id="bulk", members=["bulk-*"]),))

    async def export(days: int) -> tuple[int, int]:
        last = date(2026, 1, 1) + timedelta(days=days - 1)
        request = ExportRequest("device-days", date(2026, 1, 1), last, sites.sites[0], None)
        manifest = manifest_for(request)
        total = 0
        tracemalloc.start()
        try:
            async for chunk in csv_chunks(manifest, export_rows(db, sites, request)):
                total += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert manifest.rows == 1000 * days and manifest.bytes == total
        return peak, total

    short_peak, _ = await export(4)
    peak, total = await export(24)
    assert peak < 1.5 * short_peak, f"peak {peak:,} B for 24 days, {short_peak:,} B for 4"
    assert peak < total, f"peak {peak:,} B for {total:,} B of CSV"  # never built whole


async def test_device_days_of_a_device_without_a_site_are_utc_days(db) -> None:
    await db.execute(
        """INSERT INTO meter_readings (meter_id, ts, kwh_consumed_ac, voltage)
           VALUES ('lone', '2026-02-01T23:30Z', 1.5, 230),
                  ('lone', '2026-02-02T00:30Z', 2.5, 230)"""
    )
    await db.execute(
        """INSERT INTO meter_hourly (meter_id, hour, readings, kwh_sum, kwh_min, kwh_max,
                                     voltage_sum, voltage_min, voltage_max, voltage_n)
           VALUES ('lone', '2026-02-01T23:00Z', 1, 1.5, 1.5, 1.5, 230, 230, 230, 1),
                  ('lone', '2026-02-02T00:00Z', 1, 2.5, 2.5, 2.5, 230, 230, 230, 1)"""
    )
    days = [d async for d in device_days(db, Sites(), date(2026, 2, 1), date(2026, 2, 2))]
    assert [(d.device_id, d.day, d.kwh, d.tz) for d in days] == [
        ("lone", date(2026, 2, 1), 1.5, "UTC"),
        ("lone", date(2026, 2, 2), 2.5, "UTC"),
    ]


async def test_a_site_losing_energy_raises_site_imbalance(start_collector, db, tmp_path) -> None:
    sites_file = tmp_path / "sites.toml"
    sites_file.write_text(
        '[[site]]\nid = "imb"\nmain_meter = "imb-main"\nmembers = ["imb-sub-*"]\n'
        "loss_tolerance_pct = 5.0\n"
    )
    service = await start_collector(
        sites_file=str(sites_file), alert_interval_s=1, alert_mqtt=False
    )
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    lines = []
    for step in range(4 * 6):  # the last four whole hours, every 10 minutes
        ts = iso(hour - timedelta(hours=4) + step * STEP)
        lines.append({"meterId": "imb-main", "kwhConsumedAc": 0.5, "timestamp": ts})
        lines.append({"meterId": "imb-sub-1", "kwhConsumedAc": 0.4, "timestamp": ts})  # 20 % gone
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as api:
        r = await api.post("/v1/ingest/meter", content="\n".join(json.dumps(x) for x in lines),
                           headers={"content-type": "application/x-ndjson"})  # fmt: skip
        assert r.status_code == 200, r.text
        alerts = await eventually(
            lambda: api.get("/v1/alerts", params={"rule": "site_imbalance"}),
            lambda response: response.json()["alerts"],
            timeout=20,
        )
        alert = alerts.json()["alerts"][0]
        assert (alert["deviceId"], alert["state"]) == ("imb-main", "firing")
        assert alert["value"] == pytest.approx(0.2)


async def test_patterns_that_put_a_device_in_two_sites_stop_the_start(
    make_settings, db, tmp_path
) -> None:
    await db.execute(
        """INSERT INTO meter_current (meter_id, ts, kwh_consumed_ac, voltage, received_at)
           VALUES ('cp-07-1', now(), 0, 230, now())"""
    )
    sites_file = tmp_path / "sites.toml"
    sites_file.write_text(
        '[[site]]\nid = "a"\nmembers = ["cp-07-*"]\n[[site]]\nid = "b"\nmembers = ["cp-*-1"]\n'
    )
    service = build_daemon(make_settings(sites_file=str(sites_file)), handle_signals=False)
    assert await asyncio.wait_for(service.run(), 30) == 1  # "site 'b': key 'members': ..."
