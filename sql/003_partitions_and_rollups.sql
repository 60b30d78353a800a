-- Time-partitioned history and exact hourly rollups.
--
-- History tables become partitioned by day (UTC). The daemon's partition manager creates
-- each day's partition ahead of time, and drops whole days past RETENTION_DAYS. A reading
-- for a day without a partition lands in the DEFAULT partition, so it is never refused;
-- the manager later moves such rows into their own day's partition.
--
-- BRIN indexes summarize a block range only when told to: autosummarize has autovacuum do
-- it as soon as a range is full, so the recent hours analytics ask about are narrowed too.
--
-- Existing rows are copied into the new table (into the default partition, and from there
-- to daily partitions by the manager). On a large existing history this copy takes a
-- while: run `energy-collector migrate` in a maintenance window.

-- meter_readings --------------------------------------------------------------------------
ALTER TABLE meter_readings RENAME TO meter_readings_unpartitioned;
ALTER INDEX meter_readings_pkey RENAME TO meter_readings_unpartitioned_pkey;
ALTER INDEX meter_readings_ts_brin RENAME TO meter_readings_unpartitioned_ts_brin;

CREATE TABLE meter_readings (
    meter_id        text COLLATE "C" NOT NULL,
    ts              timestamptz      NOT NULL,
    kwh_consumed_ac double precision NOT NULL CHECK (kwh_consumed_ac >= 0),
    voltage         double precision NOT NULL,
    received_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX meter_readings_ts_brin ON meter_readings USING brin (ts)
    WITH (pages_per_range = 32, autosummarize = on);
CREATE TABLE meter_readings_default PARTITION OF meter_readings DEFAULT;
INSERT INTO meter_readings SELECT * FROM meter_readings_unpartitioned ORDER BY ts;
DROP TABLE meter_readings_unpartitioned;

-- vehicle_readings ------------------------------------------------------------------------
ALTER TABLE vehicle_readings RENAME TO vehicle_readings_unpartitioned;
ALTER INDEX vehicle_readings_pkey RENAME TO vehicle_readings_unpartitioned_pkey;
ALTER INDEX vehicle_readings_ts_brin RENAME TO vehicle_readings_unpartitioned_ts_brin;

CREATE TABLE vehicle_readings (
    vehicle_id       text COLLATE "C" NOT NULL,
    ts               timestamptz      NOT NULL,
    soc              double precision NOT NULL CHECK (soc BETWEEN 0 AND 100),
    kwh_delivered_dc double precision NOT NULL CHECK (kwh_delivered_dc >= 0),
    battery_temp     double precision NOT NULL,
    received_at      timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (vehicle_id, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX vehicle_readings_ts_brin ON vehicle_readings USING brin (ts)
    WITH (pages_per_range = 32, autosummarize = on);
CREATE TABLE vehicle_readings_default PARTITION OF vehicle_readings DEFAULT;
INSERT INTO vehicle_readings SELECT * FROM vehicle_readings_unpartitioned ORDER BY ts;
DROP TABLE vehicle_readings_unpartitioned;

-- Hourly rollups ---------------------------------------------------------------------------
-- One row per device and UTC hour, updated in the same statement as the history insert,
-- from the rows that insert really added: a redelivered reading (absorbed by the history
-- key) is never counted twice. Sums and counts are exact; avg = sum / readings.
-- fillfactor leaves room on each page so the frequent updates stay HOT (no index update).
CREATE TABLE meter_hourly (
    meter_id    text COLLATE "C" NOT NULL,
    hour        timestamptz      NOT NULL,
    readings    integer          NOT NULL,
    kwh_sum     double precision NOT NULL,
    kwh_min     double precision NOT NULL,
    kwh_max     double precision NOT NULL,
    voltage_sum double precision NOT NULL,
    voltage_min double precision NOT NULL,
    voltage_max double precision NOT NULL,
    PRIMARY KEY (meter_id, hour)
) WITH (fillfactor = 70);
CREATE INDEX meter_hourly_hour ON meter_hourly (hour);

CREATE TABLE vehicle_hourly (
    vehicle_id text COLLATE "C" NOT NULL,
    hour       timestamptz      NOT NULL,
    readings   integer          NOT NULL,
    soc_sum    double precision NOT NULL,
    soc_min    double precision NOT NULL,
    soc_max    double precision NOT NULL,
    kwh_sum    double precision NOT NULL,
    kwh_min    double precision NOT NULL,
    kwh_max    double precision NOT NULL,
    temp_sum   double precision NOT NULL,
    temp_min   double precision NOT NULL,
    temp_max   double precision NOT NULL,
    PRIMARY KEY (vehicle_id, hour)
) WITH (fillfactor = 70);
CREATE INDEX vehicle_hourly_hour ON vehicle_hourly (hour);

INSERT INTO meter_hourly
SELECT meter_id, date_trunc('hour', ts, 'UTC'), count(*),
       sum(kwh_consumed_ac), min(kwh_consumed_ac), max(kwh_consumed_ac),
       sum(voltage), min(voltage), max(voltage)
FROM meter_readings GROUP BY 1, 2;

INSERT INTO vehicle_hourly
SELECT vehicle_id, date_trunc('hour', ts, 'UTC'), count(*),
       sum(soc), min(soc), max(soc),
       sum(kwh_delivered_dc), min(kwh_delivered_dc), max(kwh_delivered_dc),
       sum(battery_temp), min(battery_temp), max(battery_temp)
FROM vehicle_readings GROUP BY 1, 2;

-- Device ids are identifiers: compare them as bytes ("C"), not by a language's rules. That
-- is cheaper in every index insert, sort and group-by of the batch statement (the database
-- default is often en_US.UTF-8, compared through strcoll), and the order of ids (and so
-- keyset pagination) is the same on every installation.
ALTER TABLE meter_current ALTER COLUMN meter_id TYPE text COLLATE "C";
ALTER TABLE vehicle_current ALTER COLUMN vehicle_id TYPE text COLLATE "C";
ALTER TABLE vehicle_meter_links ALTER COLUMN vehicle_id TYPE text COLLATE "C",
                                ALTER COLUMN meter_id TYPE text COLLATE "C";

-- The current tables are updated in place at every batch: leave room for HOT updates too.
ALTER TABLE meter_current SET (fillfactor = 70);
ALTER TABLE vehicle_current SET (fillfactor = 70);

-- A time range [s, e) cut into the whole UTC hours inside it (whole = true: read from the
-- hourly rollups) and the partial hours at its edges (whole = false: read the raw rows).
-- Analytics over any window or link span read rollups for the middle and raw rows only
-- for at most an hour at each end.
CREATE FUNCTION hour_pieces(s timestamptz, e timestamptz)
RETURNS TABLE (lo timestamptz, hi timestamptz, whole boolean)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT v.lo, v.hi, v.whole
    FROM (SELECT date_trunc('hour', s, 'UTC')
                 + CASE WHEN date_trunc('hour', s, 'UTC') < s THEN interval '1 hour'
                        ELSE interval '0' END AS hs,
                 date_trunc('hour', e, 'UTC') AS he) h,
         LATERAL (VALUES (s, least(h.hs, e), false),
                         (h.hs, h.he, true),
                         (greatest(h.he, h.hs), e, false)) AS v (lo, hi, whole)
    WHERE v.lo < v.hi
$$;
