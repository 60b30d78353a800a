-- Which vehicle is on the charger of which meter, and since when.
--
-- A vehicle moves between chargers; every link keeps the time it started and ended, so
-- analytics attribute each meter reading to the vehicle linked at the reading's time
-- (started_at <= ts < ended_at). At most one open link per vehicle and per meter.
CREATE TABLE IF NOT EXISTS vehicle_meter_links (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vehicle_id text        NOT NULL,
    meter_id   text        NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz,
    CHECK (ended_at IS NULL OR ended_at > started_at)
);
CREATE UNIQUE INDEX IF NOT EXISTS vehicle_meter_links_open_vehicle
    ON vehicle_meter_links (vehicle_id) WHERE ended_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS vehicle_meter_links_open_meter
    ON vehicle_meter_links (meter_id) WHERE ended_at IS NULL;
CREATE INDEX IF NOT EXISTS vehicle_meter_links_vehicle
    ON vehicle_meter_links (vehicle_id, started_at);
CREATE INDEX IF NOT EXISTS vehicle_meter_links_meter
    ON vehicle_meter_links (meter_id, started_at);

-- Fleet-wide questions ("all devices, last 24 h") read a time window across devices.
-- Rows arrive roughly in time order, so a BRIN index (a few pages, almost free to maintain
-- on insert) narrows such a scan to the window's blocks; 32 pages per range (instead of
-- 128) keeps the ranges tight when late readings are mixed in.
CREATE INDEX IF NOT EXISTS meter_readings_ts_brin ON meter_readings USING brin (ts) WITH (pages_per_range = 32);
CREATE INDEX IF NOT EXISTS vehicle_readings_ts_brin ON vehicle_readings USING brin (ts) WITH (pages_per_range = 32);
