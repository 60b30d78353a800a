-- Cumulative energy registers (collector/ingest/registers.py, docs/registers.md).
--
-- A register reading is stored like an interval reading: its `kwh_consumed_ac` /
-- `kwh_delivered_dc` is the energy it books (derived from its neighbours), so history,
-- current state, rollups and every analytics query work on it unchanged. Beside it: the raw
-- register value as it arrived (history stays auditable), what the reading was taken for
-- (`register_quality`: baseline, ok, dip, glitch, reset, rollover, quarantined, shift,
-- replaced, pending_drop, pending_jump), and the chain after it (`register_level`: the
-- register value the next reading is measured from, set at `register_level_ts`), from which
-- a late reading's neighbourhood is booked again. Interval readings leave them NULL.

ALTER TABLE meter_readings
    ADD COLUMN kwh_register_ac   double precision CHECK (kwh_register_ac >= 0),
    ADD COLUMN register_quality  text,
    ADD COLUMN register_level    double precision,
    ADD COLUMN register_level_ts timestamptz;
ALTER TABLE vehicle_readings
    ADD COLUMN kwh_register_dc   double precision CHECK (kwh_register_dc >= 0),
    ADD COLUMN register_quality  text,
    ADD COLUMN register_level    double precision,
    ADD COLUMN register_level_ts timestamptz;

-- The latest reading of each device, and the register chain after it: what an in-order
-- register reading is booked from without reading the history (the collector also keeps it
-- in memory). `register_prev_*`: the reading before it and the chain after that one, what a
-- pending latest reading is decided from once the next one arrives. Every change of a row
-- increments `version`; a collector writes a register device's row only if it still has the
-- version its bookings were made from (compare-and-set, below): two collectors of a shared
-- subscription never book one device's readings from the same old state.
ALTER TABLE meter_current
    ADD COLUMN kwh_register_ac        double precision,
    ADD COLUMN register_quality       text,
    ADD COLUMN register_level         double precision,
    ADD COLUMN register_level_ts      timestamptz,
    ADD COLUMN register_prev_ts       timestamptz,
    ADD COLUMN register_prev_level    double precision,
    ADD COLUMN register_prev_level_ts timestamptz,
    ADD COLUMN version                bigint NOT NULL DEFAULT 0;
ALTER TABLE vehicle_current
    ADD COLUMN kwh_register_dc        double precision,
    ADD COLUMN register_quality       text,
    ADD COLUMN register_level         double precision,
    ADD COLUMN register_level_ts      timestamptz,
    ADD COLUMN register_prev_ts       timestamptz,
    ADD COLUMN register_prev_level    double precision,
    ADD COLUMN register_prev_level_ts timestamptz,
    ADD COLUMN version                bigint NOT NULL DEFAULT 0;

-- Per device and hour: how many readings were registers, and how many of them were taken
-- for something other than a plain increment. Kept exact with the history, as the sums are.
ALTER TABLE meter_hourly
    ADD COLUMN register_readings integer NOT NULL DEFAULT 0,
    ADD COLUMN register_resets      integer NOT NULL DEFAULT 0,
    ADD COLUMN register_glitches    integer NOT NULL DEFAULT 0,
    ADD COLUMN register_quarantined integer NOT NULL DEFAULT 0,
    ADD COLUMN register_dips        integer NOT NULL DEFAULT 0,
    ADD COLUMN register_rollovers   integer NOT NULL DEFAULT 0,
    ADD COLUMN register_shifts      integer NOT NULL DEFAULT 0,
    ADD COLUMN register_pending     integer NOT NULL DEFAULT 0;
ALTER TABLE vehicle_hourly
    ADD COLUMN register_readings integer NOT NULL DEFAULT 0,
    ADD COLUMN register_resets      integer NOT NULL DEFAULT 0,
    ADD COLUMN register_glitches    integer NOT NULL DEFAULT 0,
    ADD COLUMN register_quarantined integer NOT NULL DEFAULT 0,
    ADD COLUMN register_dips        integer NOT NULL DEFAULT 0,
    ADD COLUMN register_rollovers   integer NOT NULL DEFAULT 0,
    ADD COLUMN register_shifts      integer NOT NULL DEFAULT 0,
    ADD COLUMN register_pending     integer NOT NULL DEFAULT 0;

-- Every device that ever sent a register reading, and what is owed to it. Written rarely
-- (a device's first register reading, a mark, its working off), never per reading.
CREATE TABLE register_devices (
    kind           text             NOT NULL CHECK (kind IN ('meter', 'vehicle')),
    device_id      text COLLATE "C" NOT NULL,
    -- Bookings from this time on must be computed again: a late interval reading, a
    -- replacement recorded afterwards. The collector's rebooker works these off
    -- (collector/ingest/register_store.py), so only the collector changes history.
    dirty_from     timestamptz,
    -- The latest recorded replacement: readings are booked with the replacements.
    replacement_at timestamptz,
    PRIMARY KEY (kind, device_id)
);
CREATE INDEX register_devices_dirty ON register_devices (dirty_from)
    WHERE dirty_from IS NOT NULL;

-- Fails the statement that wrote register devices' current rows from an old version
-- (SQLSTATE RS001): the collector reads them again and books the batch again.
CREATE FUNCTION register_states_written(expected bigint, written bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF written <> expected THEN
        RAISE EXCEPTION 'register state moved: % of % devices written', written, expected
            USING ERRCODE = 'RS001';
    END IF;
    RETURN written;
END $$;

-- Meter (or telematics unit) replacements, recorded by an operator: readings after `at`
-- come from a new register. `final_kwh`: the old register's last value, if known;
-- `start_kwh`: the new one's first value, if known.
CREATE TABLE register_replacements (
    id         bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       text             NOT NULL CHECK (kind IN ('meter', 'vehicle')),
    device_id  text COLLATE "C" NOT NULL,
    at         timestamptz      NOT NULL,
    final_kwh  double precision CHECK (final_kwh >= 0),
    start_kwh  double precision CHECK (start_kwh >= 0),
    created_at timestamptz      NOT NULL DEFAULT now(),
    UNIQUE (kind, device_id, at)
);
