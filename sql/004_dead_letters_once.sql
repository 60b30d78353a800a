-- Dead letters are kept once per (topic, reason, payload): a message that arrives again the
-- same way (a retained message redelivered at every subscribe, a device resending a bad
-- packet, one HTTP request repeating an item) counts up `repeats` and moves
-- `last_received_at`, instead of adding a row. The table says what is wrong and how often,
-- without repeating it. `received_at` stays the first arrival.

ALTER TABLE rejected_messages
    ADD COLUMN payload_sha256   bytea,
    ADD COLUMN repeats          integer     NOT NULL DEFAULT 1,
    ADD COLUMN last_received_at timestamptz;

UPDATE rejected_messages SET payload_sha256 = sha256(payload), last_received_at = received_at;

-- Rows stored before this migration that repeat one another become one.
WITH groups AS (
    SELECT min(id) AS keep, topic, reason, payload_sha256,
           count(*) AS n, min(received_at) AS first, max(received_at) AS last
    FROM rejected_messages
    GROUP BY topic, reason, payload_sha256
    HAVING count(*) > 1
), kept AS (
    UPDATE rejected_messages r
    SET repeats = g.n, received_at = g.first, last_received_at = g.last
    FROM groups g WHERE r.id = g.keep
)
DELETE FROM rejected_messages r
USING groups g
WHERE r.topic = g.topic AND r.reason = g.reason AND r.payload_sha256 = g.payload_sha256
  AND r.id <> g.keep;

ALTER TABLE rejected_messages
    ALTER COLUMN payload_sha256 SET NOT NULL,
    ALTER COLUMN last_received_at SET NOT NULL,
    ALTER COLUMN last_received_at SET DEFAULT now();

CREATE UNIQUE INDEX rejected_messages_once
    ON rejected_messages (topic, reason, payload_sha256);
CREATE INDEX rejected_messages_last_received_at_idx ON rejected_messages (last_received_at);
