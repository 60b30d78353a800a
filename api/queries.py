"""The API's SQL: status, links and analytics. Each function takes a connection.

Every analytics query reads only the rows of its window: one device's rows through the
primary key (device id, ts) as a range scan, the fleet's through the BRIN index on ts.
A meter reading counts for the vehicle linked to the meter at the reading's time
(started_at <= ts < ended_at).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

# --- status --------------------------------------------------------------------------------

METER_STATUS = """
SELECT c.meter_id, c.ts, c.kwh_consumed_ac, c.voltage, c.received_at,
       extract(epoch FROM now() - c.ts)::float8 AS age_s, l.vehicle_id AS linked
FROM meter_current c
LEFT JOIN vehicle_meter_links l ON l.meter_id = c.meter_id AND l.ended_at IS NULL
"""
VEHICLE_STATUS = """
SELECT c.vehicle_id, c.ts, c.soc, c.kwh_delivered_dc, c.battery_temp, c.received_at,
       extract(epoch FROM now() - c.ts)::float8 AS age_s, l.meter_id AS linked
FROM vehicle_current c
LEFT JOIN vehicle_meter_links l ON l.vehicle_id = c.vehicle_id AND l.ended_at IS NULL
"""


async def meter_status(conn: asyncpg.Connection, meter_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(METER_STATUS + "WHERE c.meter_id = $1", meter_id)


async def vehicle_status(conn: asyncpg.Connection, vehicle_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(VEHICLE_STATUS + "WHERE c.vehicle_id = $1", vehicle_id)


async def meter_status_page(
    conn: asyncpg.Connection, *, after: str | None, limit: int, silent_minutes: int | None
) -> list[asyncpg.Record]:
    """Meters in id order after ``after`` (keyset pagination), optionally only silent ones."""
    return await conn.fetch(
        METER_STATUS
        + """WHERE ($1::text IS NULL OR c.meter_id > $1)
               AND ($2::int IS NULL OR c.ts < now() - make_interval(mins => $2))
             ORDER BY c.meter_id LIMIT $3""",
        after,
        silent_minutes,
        limit,
    )


async def vehicle_status_page(
    conn: asyncpg.Connection,
    *,
    after: str | None,
    limit: int,
    silent_minutes: int | None,
    soc_below: float | None,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        VEHICLE_STATUS
        + """WHERE ($1::text IS NULL OR c.vehicle_id > $1)
               AND ($2::int IS NULL OR c.ts < now() - make_interval(mins => $2))
               AND ($3::float8 IS NULL OR c.soc < $3)
             ORDER BY c.vehicle_id LIMIT $4""",
        after,
        silent_minutes,
        soc_below,
        limit,
    )


# --- links ---------------------------------------------------------------------------------

LINK_COLUMNS = "vehicle_id, meter_id, started_at, ended_at"


async def link_history(conn: asyncpg.Connection, vehicle_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {LINK_COLUMNS} FROM vehicle_meter_links WHERE vehicle_id = $1 "
        "ORDER BY started_at DESC, id DESC",
        vehicle_id,
    )


class LinkConflict(Exception):
    """The link cannot start then (it would overlap the history); the message says why."""


async def put_link(
    conn: asyncpg.Connection, vehicle_id: str, meter_id: str, started_at: datetime
) -> tuple[asyncpg.Record, bool]:
    """Link the vehicle to the meter from ``started_at``; returns (link, created).

    Ends the vehicle's open link (it moved) and the meter's open link to another vehicle
    (that one left the charger). Linking to the meter it is already on changes nothing.
    """
    async with conn.transaction():
        # Serialise link changes: two concurrent PUTs must not both see "no open link".
        await conn.execute("LOCK TABLE vehicle_meter_links IN SHARE ROW EXCLUSIVE MODE")
        current = await conn.fetchrow(
            f"SELECT id, {LINK_COLUMNS} FROM vehicle_meter_links "
            "WHERE vehicle_id = $1 AND ended_at IS NULL",
            vehicle_id,
        )
        if current is not None and current["meter_id"] == meter_id:
            return current, False
        latest = await conn.fetchval(
            """SELECT max(greatest(started_at, coalesce(ended_at, started_at)))
               FROM vehicle_meter_links WHERE vehicle_id = $1 OR meter_id = $2""",
            vehicle_id,
            meter_id,
        )
        if latest is not None and started_at <= latest:
            raise LinkConflict(
                f"startedAt {started_at.isoformat()} is not after the latest link change of "
                f"this vehicle or meter ({latest.isoformat()}); link history only moves forward"
            )
        await conn.execute(
            "UPDATE vehicle_meter_links SET ended_at = $3 "
            "WHERE ended_at IS NULL AND (vehicle_id = $1 OR meter_id = $2)",
            vehicle_id,
            meter_id,
            started_at,
        )
        row = await conn.fetchrow(
            f"INSERT INTO vehicle_meter_links (vehicle_id, meter_id, started_at) "
            f"VALUES ($1, $2, $3) RETURNING {LINK_COLUMNS}",
            vehicle_id,
            meter_id,
            started_at,
        )
        assert row is not None
        return row, True


async def end_link(conn: asyncpg.Connection, vehicle_id: str) -> asyncpg.Record | None:
    """End the vehicle's open link now; None if it has none."""
    return await conn.fetchrow(
        f"UPDATE vehicle_meter_links SET ended_at = greatest(now(), started_at + "
        f"interval '1 microsecond') WHERE vehicle_id = $1 AND ended_at IS NULL "
        f"RETURNING {LINK_COLUMNS}",
        vehicle_id,
    )


# --- analytics -----------------------------------------------------------------------------

# The vehicle's links clipped to the window: [s, e) spans of one meter each.
SPANS = """
spans AS (
    SELECT meter_id, greatest(started_at, $2) AS s,
           least(coalesce(ended_at, 'infinity'), $3) AS e
    FROM vehicle_meter_links
    WHERE vehicle_id = $1 AND started_at < $3 AND coalesce(ended_at, 'infinity') > $2
)"""

PERFORMANCE = f"""
WITH {SPANS},
ac AS (
    SELECT coalesce(sum(m.kwh_consumed_ac), 0) AS kwh, count(m.ts) AS n
    FROM spans JOIN meter_readings m
      ON m.meter_id = spans.meter_id AND m.ts >= spans.s AND m.ts < spans.e
     AND m.ts >= $2 AND m.ts < $3
),
v AS (
    SELECT v.kwh_delivered_dc, v.battery_temp,
           EXISTS (SELECT 1 FROM spans WHERE v.ts >= spans.s AND v.ts < spans.e) AS linked
    FROM vehicle_readings v
    WHERE v.vehicle_id = $1 AND v.ts >= $2 AND v.ts < $3
)
SELECT ac.kwh AS ac_kwh, ac.n AS ac_n,
       coalesce((SELECT sum(kwh_delivered_dc) FROM v WHERE linked), 0) AS dc_kwh,
       coalesce((SELECT sum(kwh_delivered_dc) FROM v WHERE NOT linked), 0) AS dc_unlinked,
       (SELECT count(*) FROM v WHERE linked) AS dc_n,
       (SELECT count(*) FROM v) AS v_n,
       (SELECT avg(battery_temp) FROM v) AS temp_avg,
       coalesce((SELECT array_agg(DISTINCT meter_id ORDER BY meter_id) FROM spans),
                '{{}}') AS meter_ids
FROM ac
"""


async def performance(
    conn: asyncpg.Connection, vehicle_id: str, start: datetime, end: datetime
) -> asyncpg.Record:
    row = await conn.fetchrow(PERFORMANCE, vehicle_id, start, end)
    assert row is not None
    return row


METER_WINDOW = """
WITH w AS (
    SELECT ts, kwh_consumed_ac, voltage FROM meter_readings
    WHERE meter_id = $1 AND ts >= $2 AND ts < $3
)
SELECT count(*) AS n,
       sum(kwh_consumed_ac) AS kwh_sum, min(kwh_consumed_ac) AS kwh_min,
       max(kwh_consumed_ac) AS kwh_max, avg(kwh_consumed_ac) AS kwh_avg,
       min(voltage) AS v_min, max(voltage) AS v_max, avg(voltage) AS v_avg,
       (SELECT row(ts, kwh_consumed_ac, voltage) FROM w ORDER BY ts LIMIT 1) AS first,
       (SELECT row(ts, kwh_consumed_ac, voltage) FROM w ORDER BY ts DESC LIMIT 1) AS last,
       coalesce((SELECT array_agg(DISTINCT vehicle_id ORDER BY vehicle_id)
                 FROM vehicle_meter_links WHERE meter_id = $1 AND started_at < $3
                   AND coalesce(ended_at, 'infinity') > $2), '{}') AS vehicle_ids
FROM w
"""

VEHICLE_WINDOW = """
WITH w AS (
    SELECT ts, soc, kwh_delivered_dc, battery_temp FROM vehicle_readings
    WHERE vehicle_id = $1 AND ts >= $2 AND ts < $3
)
SELECT count(*) AS n,
       sum(soc) AS soc_sum, min(soc) AS soc_min, max(soc) AS soc_max, avg(soc) AS soc_avg,
       sum(kwh_delivered_dc) AS kwh_sum, min(kwh_delivered_dc) AS kwh_min,
       max(kwh_delivered_dc) AS kwh_max, avg(kwh_delivered_dc) AS kwh_avg,
       sum(battery_temp) AS t_sum, min(battery_temp) AS t_min, max(battery_temp) AS t_max,
       avg(battery_temp) AS t_avg,
       (SELECT row(ts, soc, kwh_delivered_dc, battery_temp) FROM w ORDER BY ts LIMIT 1) AS first,
       (SELECT row(ts, soc, kwh_delivered_dc, battery_temp) FROM w ORDER BY ts DESC LIMIT 1)
           AS last,
       coalesce((SELECT array_agg(DISTINCT meter_id ORDER BY meter_id)
                 FROM vehicle_meter_links WHERE vehicle_id = $1 AND started_at < $3
                   AND coalesce(ended_at, 'infinity') > $2), '{}') AS meter_ids
FROM w
"""


async def meter_window(
    conn: asyncpg.Connection, meter_id: str, start: datetime, end: datetime
) -> asyncpg.Record:
    row = await conn.fetchrow(METER_WINDOW, meter_id, start, end)
    assert row is not None
    return row


async def vehicle_window(
    conn: asyncpg.Connection, vehicle_id: str, start: datetime, end: datetime
) -> asyncpg.Record:
    row = await conn.fetchrow(VEHICLE_WINDOW, vehicle_id, start, end)
    assert row is not None
    return row


SERIES = f"""
WITH {SPANS},
buckets AS (
    SELECT generate_series(date_bin($4::interval, $2, '2000-01-01 00:00:00+00'),
                           $3 - interval '1 microsecond', $4::interval) AS start
),
ac AS (
    SELECT date_bin($4::interval, m.ts, '2000-01-01 00:00:00+00') AS start,
           sum(m.kwh_consumed_ac) AS kwh, count(*) AS n
    FROM spans JOIN meter_readings m
      ON m.meter_id = spans.meter_id AND m.ts >= spans.s AND m.ts < spans.e
     AND m.ts >= $2 AND m.ts < $3
    GROUP BY 1
),
v AS (
    SELECT date_bin($4::interval, v.ts, '2000-01-01 00:00:00+00') AS start, v.*,
           EXISTS (SELECT 1 FROM spans WHERE v.ts >= spans.s AND v.ts < spans.e) AS linked
    FROM vehicle_readings v
    WHERE v.vehicle_id = $1 AND v.ts >= $2 AND v.ts < $3
),
dc AS (
    SELECT start, coalesce(sum(kwh_delivered_dc) FILTER (WHERE linked), 0) AS kwh,
           avg(soc) AS soc_avg, min(soc) AS soc_min, max(soc) AS soc_max,
           avg(battery_temp) AS t_avg, max(battery_temp) AS t_max, count(*) AS n
    FROM v GROUP BY start
)
SELECT b.start, coalesce(ac.kwh, 0) AS ac_kwh, coalesce(ac.n, 0) AS ac_n,
       coalesce(dc.kwh, 0) AS dc_kwh, dc.soc_avg, dc.soc_min, dc.soc_max, dc.t_avg, dc.t_max,
       coalesce(dc.n, 0) AS v_n
FROM buckets b LEFT JOIN ac USING (start) LEFT JOIN dc USING (start)
ORDER BY b.start
"""


async def series(
    conn: asyncpg.Connection, vehicle_id: str, start: datetime, end: datetime, bucket: str
) -> list[asyncpg.Record]:
    return await conn.fetch(SERIES, vehicle_id, start, end, bucket)


FLEET_TOTALS = """
SELECT (SELECT count(*) FROM meter_current) AS meters_total,
       (SELECT count(*) FROM vehicle_current) AS vehicles_total,
       m.kwh AS ac_kwh, m.devices AS meters_reporting,
       v.kwh AS dc_kwh, v.devices AS vehicles_reporting
FROM (SELECT coalesce(sum(kwh), 0) AS kwh, count(*) AS devices FROM (
          SELECT meter_id, sum(kwh_consumed_ac) AS kwh FROM meter_readings
          WHERE ts >= $1 AND ts < $2 GROUP BY meter_id) x) m,
     (SELECT coalesce(sum(kwh), 0) AS kwh, count(*) AS devices FROM (
          SELECT vehicle_id, sum(kwh_delivered_dc) AS kwh FROM vehicle_readings
          WHERE ts >= $1 AND ts < $2 GROUP BY vehicle_id) y) v
"""

# Per vehicle: AC of its meters and its DC, both over its link spans within the window.
FLEET_VEHICLES = """
WITH spans AS (
    SELECT vehicle_id, meter_id, greatest(started_at, $1) AS s,
           least(coalesce(ended_at, 'infinity'), $2) AS e
    FROM vehicle_meter_links
    WHERE started_at < $2 AND coalesce(ended_at, 'infinity') > $1
),
ac AS (
    SELECT spans.vehicle_id, sum(m.kwh_consumed_ac) AS kwh, count(*) AS n
    FROM spans JOIN meter_readings m
      ON m.meter_id = spans.meter_id AND m.ts >= spans.s AND m.ts < spans.e
     AND m.ts >= $1 AND m.ts < $2
    GROUP BY spans.vehicle_id
),
dc AS (
    SELECT spans.vehicle_id, sum(v.kwh_delivered_dc) AS kwh, count(*) AS n
    FROM spans JOIN vehicle_readings v
      ON v.vehicle_id = spans.vehicle_id AND v.ts >= spans.s AND v.ts < spans.e
     AND v.ts >= $1 AND v.ts < $2
    GROUP BY spans.vehicle_id
)
SELECT s.vehicle_id, s.meter_ids, coalesce(ac.kwh, 0) AS ac_kwh, coalesce(ac.n, 0) AS ac_n,
       coalesce(dc.kwh, 0) AS dc_kwh, coalesce(dc.n, 0) AS dc_n
FROM (SELECT vehicle_id, array_agg(DISTINCT meter_id ORDER BY meter_id) AS meter_ids
      FROM spans GROUP BY vehicle_id) s
LEFT JOIN ac USING (vehicle_id) LEFT JOIN dc USING (vehicle_id)
"""


async def fleet(
    conn: asyncpg.Connection, start: datetime, end: datetime
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    totals = await conn.fetchrow(FLEET_TOTALS, start, end)
    assert totals is not None
    return totals, await conn.fetch(FLEET_VEHICLES, start, end)


def stats(row: Any, prefix: str, with_sum: bool = True) -> dict[str, float | None]:
    return {
        "sum": row[f"{prefix}_sum"] if with_sum else None,
        "min": row[f"{prefix}_min"],
        "max": row[f"{prefix}_max"],
        "avg": row[f"{prefix}_avg"],
    }
