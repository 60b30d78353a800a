"""The API's SQL: status, links and analytics. Each function takes a connection.

Every analytics query reads only the rows of its window: one device's rows through the
primary key (device id, ts) as a range scan, the fleet's through the BRIN index on ts.
A meter reading counts for the vehicle linked to the meter at the reading's time
(started_at <= ts < ended_at).
"""

from __future__ import annotations

from datetime import datetime, timedelta

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


async def meter_link_history(conn: asyncpg.Connection, meter_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {LINK_COLUMNS} FROM vehicle_meter_links WHERE meter_id = $1 "
        "ORDER BY started_at DESC, id DESC",
        meter_id,
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
#
# A window or link span is cut by hour_pieces() (sql/003) into whole UTC hours, read from
# the hourly rollups, and the partial hours at its edges, read from the raw rows: the cost
# of an analytics query does not grow with the number of readings in the window.

# The vehicle's links clipped to the window: [s, e) spans of one meter each.
SPANS = """
spans AS (
    SELECT meter_id, greatest(started_at, $2) AS s,
           least(coalesce(ended_at, 'infinity'), $3) AS e
    FROM vehicle_meter_links
    WHERE vehicle_id = $1 AND started_at < $3 AND coalesce(ended_at, 'infinity') > $2
),
pieces AS (
    SELECT spans.meter_id, p.lo, p.hi, p.whole FROM spans, hour_pieces(spans.s, spans.e) p
),
window_pieces AS (SELECT lo, hi, whole FROM hour_pieces($2, $3))"""

PERFORMANCE = f"""
WITH {SPANS},
ac AS (  -- AC of the linked meters over the spans
    SELECT coalesce(sum(kwh), 0) AS kwh, coalesce(sum(n), 0)::bigint AS n FROM (
        SELECT r.kwh_sum AS kwh, r.readings AS n
        FROM pieces p JOIN meter_hourly r
          ON r.meter_id = p.meter_id AND r.hour >= p.lo AND r.hour < p.hi
        WHERE p.whole
        UNION ALL
        SELECT m.kwh_consumed_ac, 1
        FROM pieces p JOIN meter_readings m
          ON m.meter_id = p.meter_id AND m.ts >= p.lo AND m.ts < p.hi
        WHERE NOT p.whole AND m.ts >= $2 AND m.ts < $3
    ) u
),
dc AS (  -- the vehicle's DC over the same spans
    SELECT coalesce(sum(kwh), 0) AS kwh, coalesce(sum(n), 0)::bigint AS n FROM (
        SELECT r.kwh_sum AS kwh, r.readings AS n
        FROM pieces p JOIN vehicle_hourly r
          ON r.vehicle_id = $1 AND r.hour >= p.lo AND r.hour < p.hi
        WHERE p.whole
        UNION ALL
        SELECT v.kwh_delivered_dc, 1
        FROM pieces p JOIN vehicle_readings v
          ON v.vehicle_id = $1 AND v.ts >= p.lo AND v.ts < p.hi
        WHERE NOT p.whole AND v.ts >= $2 AND v.ts < $3
    ) u
),
total AS (  -- the vehicle over the whole window, linked or not
    SELECT coalesce(sum(kwh), 0) AS kwh, coalesce(sum(n), 0)::bigint AS n,
           sum(temp) AS temp FROM (
        SELECT r.kwh_sum AS kwh, r.readings AS n, r.temp_sum AS temp
        FROM window_pieces p JOIN vehicle_hourly r
          ON r.vehicle_id = $1 AND r.hour >= p.lo AND r.hour < p.hi
        WHERE p.whole
        UNION ALL
        SELECT v.kwh_delivered_dc, 1, v.battery_temp
        FROM window_pieces p JOIN vehicle_readings v
          ON v.vehicle_id = $1 AND v.ts >= p.lo AND v.ts < p.hi
        WHERE NOT p.whole
    ) u
)
SELECT ac.kwh AS ac_kwh, ac.n AS ac_n, dc.kwh AS dc_kwh, dc.n AS dc_n,
       greatest(total.kwh - dc.kwh, 0) AS dc_unlinked, total.n AS v_n,
       total.temp / nullif(total.n, 0) AS temp_avg,
       coalesce((SELECT array_agg(DISTINCT meter_id ORDER BY meter_id) FROM spans),
                '{{}}') AS meter_ids
FROM ac, dc, total
"""


async def performance(
    conn: asyncpg.Connection, vehicle_id: str, start: datetime, end: datetime
) -> asyncpg.Record:
    row = await conn.fetchrow(PERFORMANCE, vehicle_id, start, end)
    assert row is not None
    return row


METER_WINDOW = """
WITH w AS (SELECT lo, hi, whole FROM hour_pieces($2, $3)),
u AS (
    SELECT r.readings AS n, r.kwh_sum, r.kwh_min, r.kwh_max,
           r.voltage_sum, r.voltage_min, r.voltage_max
    FROM w JOIN meter_hourly r ON r.meter_id = $1 AND r.hour >= w.lo AND r.hour < w.hi
    WHERE w.whole
    UNION ALL
    SELECT 1, m.kwh_consumed_ac, m.kwh_consumed_ac, m.kwh_consumed_ac,
           m.voltage, m.voltage, m.voltage
    FROM w JOIN meter_readings m ON m.meter_id = $1 AND m.ts >= w.lo AND m.ts < w.hi
    WHERE NOT w.whole
)
SELECT coalesce(sum(n), 0)::bigint AS n,
       sum(kwh_sum) AS kwh_sum, min(kwh_min) AS kwh_min, max(kwh_max) AS kwh_max,
       sum(kwh_sum) / nullif(sum(n), 0) AS kwh_avg,
       min(voltage_min) AS v_min, max(voltage_max) AS v_max,
       sum(voltage_sum) / nullif(sum(n), 0) AS v_avg,
       (SELECT row(ts, kwh_consumed_ac, voltage) FROM meter_readings
        WHERE meter_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT 1) AS first,
       (SELECT row(ts, kwh_consumed_ac, voltage) FROM meter_readings
        WHERE meter_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts DESC LIMIT 1) AS last,
       coalesce((SELECT array_agg(DISTINCT vehicle_id ORDER BY vehicle_id)
                 FROM vehicle_meter_links WHERE meter_id = $1 AND started_at < $3
                   AND coalesce(ended_at, 'infinity') > $2), '{}') AS vehicle_ids
FROM u
"""

VEHICLE_WINDOW = """
WITH w AS (SELECT lo, hi, whole FROM hour_pieces($2, $3)),
u AS (
    SELECT r.readings AS n, r.soc_sum, r.soc_min, r.soc_max, r.kwh_sum, r.kwh_min, r.kwh_max,
           r.temp_sum, r.temp_min, r.temp_max
    FROM w JOIN vehicle_hourly r ON r.vehicle_id = $1 AND r.hour >= w.lo AND r.hour < w.hi
    WHERE w.whole
    UNION ALL
    SELECT 1, v.soc, v.soc, v.soc, v.kwh_delivered_dc, v.kwh_delivered_dc, v.kwh_delivered_dc,
           v.battery_temp, v.battery_temp, v.battery_temp
    FROM w JOIN vehicle_readings v ON v.vehicle_id = $1 AND v.ts >= w.lo AND v.ts < w.hi
    WHERE NOT w.whole
)
SELECT coalesce(sum(n), 0)::bigint AS n,
       sum(soc_sum) AS soc_sum, min(soc_min) AS soc_min, max(soc_max) AS soc_max,
       sum(soc_sum) / nullif(sum(n), 0) AS soc_avg,
       sum(kwh_sum) AS kwh_sum, min(kwh_min) AS kwh_min, max(kwh_max) AS kwh_max,
       sum(kwh_sum) / nullif(sum(n), 0) AS kwh_avg,
       sum(temp_sum) AS t_sum, min(temp_min) AS t_min, max(temp_max) AS t_max,
       sum(temp_sum) / nullif(sum(n), 0) AS t_avg,
       (SELECT row(ts, soc, kwh_delivered_dc, battery_temp) FROM vehicle_readings
        WHERE vehicle_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT 1) AS first,
       (SELECT row(ts, soc, kwh_delivered_dc, battery_temp) FROM vehicle_readings
        WHERE vehicle_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts DESC LIMIT 1) AS last,
       coalesce((SELECT array_agg(DISTINCT meter_id ORDER BY meter_id)
                 FROM vehicle_meter_links WHERE vehicle_id = $1 AND started_at < $3
                   AND coalesce(ended_at, 'infinity') > $2), '{}') AS meter_ids
FROM u
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


# Buckets of whole hours ($5 true) read the rollups; smaller buckets read raw rows only.
SERIES = """
WITH spans AS (
    SELECT meter_id, greatest(started_at, $2) AS s,
           least(coalesce(ended_at, 'infinity'), $3) AS e
    FROM vehicle_meter_links
    WHERE vehicle_id = $1 AND started_at < $3 AND coalesce(ended_at, 'infinity') > $2
),
pieces AS (
    SELECT spans.meter_id, p.lo, p.hi, p.whole
    FROM spans, hour_pieces(spans.s, spans.e) p WHERE $5
    UNION ALL
    SELECT meter_id, s, e, false FROM spans WHERE NOT $5
),
window_pieces AS (
    SELECT lo, hi, whole FROM hour_pieces($2, $3) WHERE $5
    UNION ALL
    SELECT $2, $3, false WHERE NOT $5
),
buckets AS (
    SELECT generate_series(date_bin($4::interval, $2, '2000-01-01 00:00:00+00'),
                           $3 - interval '1 microsecond', $4::interval) AS start
),
ac AS (
    SELECT start, sum(kwh) AS kwh, sum(n) AS n FROM (
        SELECT date_bin($4::interval, r.hour, '2000-01-01 00:00:00+00') AS start,
               r.kwh_sum AS kwh, r.readings AS n
        FROM pieces p JOIN meter_hourly r
          ON r.meter_id = p.meter_id AND r.hour >= p.lo AND r.hour < p.hi
        WHERE p.whole
        UNION ALL
        SELECT date_bin($4::interval, m.ts, '2000-01-01 00:00:00+00'), m.kwh_consumed_ac, 1
        FROM pieces p JOIN meter_readings m
          ON m.meter_id = p.meter_id AND m.ts >= p.lo AND m.ts < p.hi
        WHERE NOT p.whole AND m.ts >= $2 AND m.ts < $3
    ) u GROUP BY start
),
dc AS (
    SELECT start, sum(kwh) AS kwh, sum(n) AS n FROM (
        SELECT date_bin($4::interval, r.hour, '2000-01-01 00:00:00+00') AS start,
               r.kwh_sum AS kwh, r.readings AS n
        FROM pieces p JOIN vehicle_hourly r
          ON r.vehicle_id = $1 AND r.hour >= p.lo AND r.hour < p.hi
        WHERE p.whole
        UNION ALL
        SELECT date_bin($4::interval, v.ts, '2000-01-01 00:00:00+00'), v.kwh_delivered_dc, 1
        FROM pieces p JOIN vehicle_readings v
          ON v.vehicle_id = $1 AND v.ts >= p.lo AND v.ts < p.hi
        WHERE NOT p.whole AND v.ts >= $2 AND v.ts < $3
    ) u GROUP BY start
),
vs AS (  -- state of charge and temperature over the whole window
    SELECT start, sum(n) AS n, sum(soc_sum) / sum(n) AS soc_avg, min(soc_min) AS soc_min,
           max(soc_max) AS soc_max, sum(temp_sum) / sum(n) AS t_avg, max(temp_max) AS t_max
    FROM (
        SELECT date_bin($4::interval, r.hour, '2000-01-01 00:00:00+00') AS start,
               r.readings AS n, r.soc_sum, r.soc_min, r.soc_max, r.temp_sum, r.temp_max
        FROM window_pieces p JOIN vehicle_hourly r
          ON r.vehicle_id = $1 AND r.hour >= p.lo AND r.hour < p.hi
        WHERE p.whole
        UNION ALL
        SELECT date_bin($4::interval, v.ts, '2000-01-01 00:00:00+00'), 1, v.soc, v.soc, v.soc,
               v.battery_temp, v.battery_temp
        FROM window_pieces p JOIN vehicle_readings v
          ON v.vehicle_id = $1 AND v.ts >= p.lo AND v.ts < p.hi
        WHERE NOT p.whole
    ) u GROUP BY start
)
SELECT b.start, coalesce(ac.kwh, 0) AS ac_kwh, coalesce(ac.n, 0) AS ac_n,
       coalesce(dc.kwh, 0) AS dc_kwh, coalesce(dc.n, 0) AS dc_n,
       vs.soc_avg, vs.soc_min, vs.soc_max, vs.t_avg, vs.t_max, coalesce(vs.n, 0) AS v_n
FROM buckets b LEFT JOIN ac USING (start) LEFT JOIN dc USING (start) LEFT JOIN vs USING (start)
ORDER BY b.start
"""


async def series(
    conn: asyncpg.Connection, vehicle_id: str, start: datetime, end: datetime, bucket: timedelta
) -> list[asyncpg.Record]:
    whole_hours = bucket % timedelta(hours=1) == timedelta(0)
    return await conn.fetch(SERIES, vehicle_id, start, end, bucket, whole_hours)


# One meter's AC and voltage per bucket; whole-hour buckets ($5 true) read the rollups.
METER_SERIES = """
WITH w AS (
    SELECT lo, hi, whole FROM hour_pieces($2, $3) WHERE $5
    UNION ALL
    SELECT $2, $3, false WHERE NOT $5
),
buckets AS (
    SELECT generate_series(date_bin($4::interval, $2, '2000-01-01 00:00:00+00'),
                           $3 - interval '1 microsecond', $4::interval) AS start
),
u AS (
    SELECT date_bin($4::interval, r.hour, '2000-01-01 00:00:00+00') AS start,
           r.kwh_sum AS kwh, r.readings AS n, r.voltage_sum AS v_sum,
           r.voltage_min AS v_min, r.voltage_max AS v_max
    FROM w JOIN meter_hourly r ON r.meter_id = $1 AND r.hour >= w.lo AND r.hour < w.hi
    WHERE w.whole
    UNION ALL
    SELECT date_bin($4::interval, m.ts, '2000-01-01 00:00:00+00'), m.kwh_consumed_ac, 1,
           m.voltage, m.voltage, m.voltage
    FROM w JOIN meter_readings m ON m.meter_id = $1 AND m.ts >= w.lo AND m.ts < w.hi
    WHERE NOT w.whole
),
agg AS (
    SELECT start, sum(kwh) AS kwh, sum(n) AS n, sum(v_sum) / sum(n) AS v_avg,
           min(v_min) AS v_min, max(v_max) AS v_max
    FROM u GROUP BY start
)
SELECT b.start, coalesce(agg.kwh, 0) AS kwh, coalesce(agg.n, 0) AS n,
       agg.v_avg, agg.v_min, agg.v_max
FROM buckets b LEFT JOIN agg USING (start)
ORDER BY b.start
"""


async def meter_series(
    conn: asyncpg.Connection, meter_id: str, start: datetime, end: datetime, bucket: timedelta
) -> list[asyncpg.Record]:
    whole_hours = bucket % timedelta(hours=1) == timedelta(0)
    return await conn.fetch(METER_SERIES, meter_id, start, end, bucket, whole_hours)


def whole_hours(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The whole UTC hours inside ``[start, end)`` as ``[lo, hi)``; ``(end, end)`` if none.

    The fleet queries read rollups inside ``[lo, hi)`` and raw rows only in the window's
    edges ``[start, lo)`` and ``[hi, end)``, all bounded by constants the planner can use
    (partition pruning, BRIN, the rollups' hour index).
    """
    hour = timedelta(hours=1)
    lo = start.replace(minute=0, second=0, microsecond=0)
    if lo < start:
        lo += hour
    hi = end.replace(minute=0, second=0, microsecond=0)
    return (lo, hi) if lo < hi else (end, end)


# $1, $2: the window; $3, $4: its whole hours (whole_hours()).
FLEET_TOTALS = """
WITH m AS (
    SELECT meter_id, sum(kwh) AS kwh FROM (
        SELECT meter_id, kwh_sum AS kwh FROM meter_hourly WHERE hour >= $3 AND hour < $4
        UNION ALL
        SELECT meter_id, kwh_consumed_ac FROM meter_readings
        WHERE (ts >= $1 AND ts < $3) OR (ts >= $4 AND ts < $2)
    ) u GROUP BY meter_id
),
v AS (
    SELECT vehicle_id, sum(kwh) AS kwh FROM (
        SELECT vehicle_id, kwh_sum AS kwh FROM vehicle_hourly WHERE hour >= $3 AND hour < $4
        UNION ALL
        SELECT vehicle_id, kwh_delivered_dc FROM vehicle_readings
        WHERE (ts >= $1 AND ts < $3) OR (ts >= $4 AND ts < $2)
    ) u GROUP BY vehicle_id
)
SELECT (SELECT count(*) FROM meter_current) AS meters_total,
       (SELECT count(*) FROM vehicle_current) AS vehicles_total,
       (SELECT coalesce(sum(kwh), 0) FROM m) AS ac_kwh,
       (SELECT count(*) FROM m) AS meters_reporting,
       (SELECT coalesce(sum(kwh), 0) FROM v) AS dc_kwh,
       (SELECT count(*) FROM v) AS vehicles_reporting
"""

# Per vehicle: AC of its meters and its DC, both over its link spans within the window.
# Whole hours inside a span: rollups. Partial hours: at the window's edges, one scan of the
# edges attributes each row to the span it falls in; at a link change inside the window,
# the few rows of that hour are looked up through the key.
FLEET_VEHICLES = """
WITH spans AS (
    SELECT vehicle_id, meter_id, greatest(started_at, $1) AS s,
           least(coalesce(ended_at, 'infinity'), $2) AS e
    FROM vehicle_meter_links
    WHERE started_at < $2 AND coalesce(ended_at, 'infinity') > $1
),
pieces AS (
    SELECT spans.vehicle_id, spans.meter_id, p.lo, p.hi, p.whole
    FROM spans, hour_pieces(spans.s, spans.e) p
),
ac AS (
    SELECT vehicle_id, sum(kwh) AS kwh, sum(n) AS n FROM (
        SELECT p.vehicle_id, r.kwh_sum AS kwh, r.readings AS n
        FROM pieces p JOIN meter_hourly r
          ON r.meter_id = p.meter_id AND r.hour >= p.lo AND r.hour < p.hi
        WHERE p.whole AND r.hour >= $3 AND r.hour < $4
        UNION ALL
        SELECT sp.vehicle_id, m.kwh_consumed_ac, 1
        FROM meter_readings m JOIN spans sp
          ON sp.meter_id = m.meter_id AND m.ts >= sp.s AND m.ts < sp.e
        WHERE (m.ts >= $1 AND m.ts < $3) OR (m.ts >= $4 AND m.ts < $2)
        UNION ALL
        SELECT p.vehicle_id, m.kwh_consumed_ac, 1
        FROM pieces p JOIN meter_readings m
          ON m.meter_id = p.meter_id AND m.ts >= p.lo AND m.ts < p.hi
        WHERE NOT p.whole AND p.lo >= $3 AND p.hi <= $4
    ) u GROUP BY vehicle_id
),
dc AS (
    SELECT vehicle_id, sum(kwh) AS kwh, sum(n) AS n FROM (
        SELECT p.vehicle_id, r.kwh_sum AS kwh, r.readings AS n
        FROM pieces p JOIN vehicle_hourly r
          ON r.vehicle_id = p.vehicle_id AND r.hour >= p.lo AND r.hour < p.hi
        WHERE p.whole AND r.hour >= $3 AND r.hour < $4
        UNION ALL
        SELECT sp.vehicle_id, v.kwh_delivered_dc, 1
        FROM vehicle_readings v JOIN spans sp
          ON sp.vehicle_id = v.vehicle_id AND v.ts >= sp.s AND v.ts < sp.e
        WHERE (v.ts >= $1 AND v.ts < $3) OR (v.ts >= $4 AND v.ts < $2)
        UNION ALL
        SELECT p.vehicle_id, v.kwh_delivered_dc, 1
        FROM pieces p JOIN vehicle_readings v
          ON v.vehicle_id = p.vehicle_id AND v.ts >= p.lo AND v.ts < p.hi
        WHERE NOT p.whole AND p.lo >= $3 AND p.hi <= $4
    ) u GROUP BY vehicle_id
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
    lo, hi = whole_hours(start, end)
    totals = await conn.fetchrow(FLEET_TOTALS, start, end, lo, hi)
    assert totals is not None
    return totals, await conn.fetch(FLEET_VEHICLES, start, end, lo, hi)
