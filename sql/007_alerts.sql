-- Alerts (collector/alerts, docs/alerts.md).
--
-- One row per alert: a (rule, device) that went pending, perhaps fired, and resolved. At
-- most one alert per (rule, device) is open (pending or firing) at a time: the partial
-- unique index makes a second one impossible, whichever collector evaluates and however
-- two readings race (ThingsBoard's duplicate alarms). Resolved rows stay: a device's
-- alert history. A pending alert whose condition goes away before `for_s` is deleted; it
-- was never told to anyone.
CREATE TABLE alerts (
    id              bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule            text COLLATE "C" NOT NULL,
    kind            text             NOT NULL CHECK (kind IN ('meter', 'vehicle')),
    device_id       text COLLATE "C" NOT NULL,
    state           text             NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    severity        text             NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    -- The value that made it fire (or, once resolved, the one that resolved it).
    value           double precision,
    -- Since when the condition holds (device time where the condition is about readings).
    since           timestamptz      NOT NULL,
    fired_at        timestamptz,
    resolved_at     timestamptz,
    -- Whether its firing was told (queued to the targets): a silenced alert is not, and
    -- is told once the silence ends; its resolution is told only if its firing was.
    notified        boolean          NOT NULL DEFAULT false,
    acknowledged_at timestamptz,
    acknowledged_by text,
    updated_at      timestamptz      NOT NULL DEFAULT now(),
    CHECK (state = 'pending' OR fired_at IS NOT NULL),
    CHECK ((state = 'resolved') = (resolved_at IS NOT NULL))
);
CREATE UNIQUE INDEX alerts_one_open ON alerts (rule, kind, device_id)
    WHERE state <> 'resolved';
CREATE INDEX alerts_device ON alerts (kind, device_id, since DESC);
CREATE INDEX alerts_open_state ON alerts (state) WHERE state <> 'resolved';

-- Silences: notifications of a rule, a device, or a rule on a device are held back until
-- `until`. The alerts themselves still change state (and show as silenced).
CREATE TABLE alert_silences (
    id         bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule       text COLLATE "C",
    kind       text             CHECK (kind IN ('meter', 'vehicle')),
    device_id  text COLLATE "C",
    until      timestamptz      NOT NULL,
    comment    text             NOT NULL DEFAULT '',
    created_by text             NOT NULL DEFAULT '',
    created_at timestamptz      NOT NULL DEFAULT now(),
    CHECK (rule IS NOT NULL OR device_id IS NOT NULL),
    CHECK ((kind IS NULL) = (device_id IS NULL))
);
CREATE INDEX alert_silences_until ON alert_silences (until);

-- The outbox: one row per transition told and target, written in the same transaction as
-- the transition, so a notification is never lost to a crash and never made twice. Rows
-- are sent at least once (a crash between the send and `sent_at` sends one again: the
-- `X-Alert-Delivery` header lets a receiver drop the copy), with backoff while a target
-- fails. `claimed_until`: a sender's lease on a row while it sends it.
CREATE TABLE alert_notifications (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id        bigint      NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    target          text        NOT NULL,
    transition      text        NOT NULL CHECK (transition IN ('firing', 'resolved')),
    -- What is told: the value and the time of the transition.
    value           double precision,
    at              timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    sent_at         timestamptz,
    last_error      text
);
CREATE INDEX alert_notifications_due ON alert_notifications (next_attempt_at)
    WHERE sent_at IS NULL;
CREATE INDEX alert_notifications_sent ON alert_notifications (sent_at)
    WHERE sent_at IS NOT NULL;

-- The register rule reads the hours with register trouble only (collector/alerts/
-- conditions.py): a few index entries instead of every device's last 24 hourly rows.
-- Updates of an hour's sums stay HOT (these columns change only at a reset or quarantine).
CREATE INDEX meter_hourly_register_trouble ON meter_hourly (hour)
    WHERE register_resets > 0 OR register_quarantined > 0;
CREATE INDEX vehicle_hourly_register_trouble ON vehicle_hourly (hour)
    WHERE register_resets > 0 OR register_quarantined > 0;
