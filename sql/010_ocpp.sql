-- Chargers that speak OCPP (collector/sources/ocpp): who they are, how they are doing, and
-- their charging sessions. The energy itself is not here: each connector is a meter
-- ({chargerId}-{connectorId}) whose register readings go to meter_readings like any other.

-- A charger the collector knows: its password (HTTP Basic, OCPP security profile 1/2) as a
-- salted scrypt hash, and what its last BootNotification said of it.
CREATE TABLE IF NOT EXISTS chargers (
    id                text        PRIMARY KEY,
    password_hash     text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    protocol          text,
    vendor            text,
    model             text,
    serial_number     text,
    firmware          text,
    connected         boolean     NOT NULL DEFAULT false,
    connected_at      timestamptz,
    disconnected_at   timestamptz,
    last_boot_at      timestamptz,
    -- any frame from the charger (heartbeats among them), written at most once a minute
    last_seen_at      timestamptz,
    last_heartbeat_at timestamptz,
    -- in relay mode: what the operator's CSMS answered the last BootNotification
    boot_status       text
);

-- Each connector's (2.0.1: EVSE's) last StatusNotification.
CREATE TABLE IF NOT EXISTS charger_connectors (
    charger_id   text        NOT NULL,
    connector_id integer     NOT NULL,
    status       text        NOT NULL,
    error_code   text,
    info         text,
    -- when the charger says the status began (its timestamp), and when we heard it
    status_at    timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (charger_id, connector_id)
);

-- An id tag (RFID card, app token) may stand for a vehicle: its sessions then link that
-- vehicle to the connector's meter for their span. `allowed` = false refuses it at Authorize.
CREATE TABLE IF NOT EXISTS charger_id_tags (
    id_tag     text        PRIMARY KEY,
    vehicle_id text,
    allowed    boolean     NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A charging session: a 1.6 transaction (its id is the one we issued in csms mode, the
-- operator's CSMS's in relay mode) or a 2.0.1 transaction (the charger's id). The energy
-- booked from our register history is computed when read; meter_*_wh are the charger's own
-- figures (meterStart/meterStop, 2.0.1: the first and last register of its events).
CREATE SEQUENCE IF NOT EXISTS charging_sessions_id_seq;
CREATE TABLE IF NOT EXISTS charging_sessions (
    id             bigint      PRIMARY KEY DEFAULT nextval('charging_sessions_id_seq'),
    charger_id     text        NOT NULL,
    connector_id   integer     NOT NULL,
    meter_id       text        NOT NULL,
    transaction_id text        NOT NULL,
    protocol       text        NOT NULL,
    id_tag         text,
    vehicle_id     text,
    started_at     timestamptz NOT NULL,
    stopped_at     timestamptz,
    meter_start_wh double precision,
    meter_stop_wh  double precision,
    stop_reason    text,
    state          text        NOT NULL DEFAULT 'active'
                   CHECK (state IN ('active', 'ended', 'ended-offline')),
    -- 2.0.1: the highest TransactionEvent seqNo seen (older events change nothing)
    last_seq_no    integer,
    soc_start      real,
    soc_end        real,
    quality        text[]      NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (charger_id, transaction_id),
    -- a StartTransaction sent again (its answer was lost) finds the session it made
    UNIQUE (charger_id, connector_id, started_at),
    CHECK (stopped_at IS NULL OR stopped_at >= started_at)
);
ALTER SEQUENCE charging_sessions_id_seq OWNED BY charging_sessions.id;
CREATE INDEX IF NOT EXISTS charging_sessions_started ON charging_sessions (started_at);
CREATE INDEX IF NOT EXISTS charging_sessions_meter ON charging_sessions (meter_id, started_at);
CREATE INDEX IF NOT EXISTS charging_sessions_vehicle ON charging_sessions (vehicle_id, started_at)
    WHERE vehicle_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS charging_sessions_active ON charging_sessions (charger_id, connector_id)
    WHERE state = 'active';

-- Signed meter values (OCMF and the like; 1.6 SignedData, 2.0.1 signedMeterValue), kept
-- verbatim beside the reading they sign: (meter_id, ts) is that reading's key.
CREATE TABLE IF NOT EXISTS charger_signed_values (
    meter_id       text        NOT NULL,
    ts             timestamptz NOT NULL,
    measurand      text        NOT NULL,
    signed_data    text        NOT NULL,
    signing_method text,
    encoding       text,
    public_key     text,
    received_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, ts, measurand)
);

-- DataTransfer frames (vendor data: meter values hide there on some chargers), kept raw.
CREATE TABLE IF NOT EXISTS charger_data_transfers (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    charger_id  text        NOT NULL,
    vendor_id   text,
    message_id  text,
    data        text,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS charger_data_transfers_charger
    ON charger_data_transfers (charger_id, received_at);
