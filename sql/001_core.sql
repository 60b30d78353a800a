-- Core schema: append-only history, one row per device of current state, dead letters.
--
-- History is keyed by (device id, ts): a redelivered reading hits the key and is absorbed, and
-- the key's index makes "one device, time range" a range scan.

CREATE TABLE IF NOT EXISTS meter_readings (
    meter_id        text             NOT NULL,
    ts              timestamptz      NOT NULL,
    kwh_consumed_ac double precision NOT NULL CHECK (kwh_consumed_ac >= 0),
    voltage         double precision NOT NULL,
    received_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, ts)
);

CREATE TABLE IF NOT EXISTS vehicle_readings (
    vehicle_id       text             NOT NULL,
    ts               timestamptz      NOT NULL,
    soc              double precision NOT NULL CHECK (soc BETWEEN 0 AND 100),
    kwh_delivered_dc double precision NOT NULL CHECK (kwh_delivered_dc >= 0),
    battery_temp     double precision NOT NULL,
    received_at      timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (vehicle_id, ts)
);

-- Latest state per device. Only moved forward in time by the writer's guarded upsert
-- (ON CONFLICT ... DO UPDATE ... WHERE current.ts < excluded.ts).
CREATE TABLE IF NOT EXISTS meter_current (
    meter_id        text             PRIMARY KEY,
    ts              timestamptz      NOT NULL,
    kwh_consumed_ac double precision NOT NULL,
    voltage         double precision NOT NULL,
    received_at     timestamptz      NOT NULL,
    updated_at      timestamptz      NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS vehicle_current (
    vehicle_id       text             PRIMARY KEY,
    ts               timestamptz      NOT NULL,
    soc              double precision NOT NULL,
    kwh_delivered_dc double precision NOT NULL,
    battery_temp     double precision NOT NULL,
    received_at      timestamptz      NOT NULL,
    updated_at       timestamptz      NOT NULL DEFAULT now()
);

-- Messages that could not be stored as readings, with the reason, for operators to inspect.
-- payload holds the raw bytes (cut at the size limit for oversized ones; payload_size is the
-- size that arrived).
CREATE TABLE IF NOT EXISTS rejected_messages (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    topic        text        NOT NULL,
    reason       text        NOT NULL,
    detail       text        NOT NULL,
    payload      bytea       NOT NULL,
    payload_size integer     NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_messages_received_at_idx ON rejected_messages (received_at);
CREATE INDEX IF NOT EXISTS rejected_messages_reason_idx ON rejected_messages (reason, received_at);
