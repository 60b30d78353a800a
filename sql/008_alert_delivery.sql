-- Alert delivery, round 3 (collector/alerts/outbox.py, docs/alerts.md "Delivery").
--
-- A notification that cannot be delivered within ALERT_GIVE_UP_S is given up: it keeps
-- its row (with the last error) and is never marked sent, so "sent" only ever means a
-- receiver took it. Given-up rows no longer hold back the rows after them.
ALTER TABLE alert_notifications ADD COLUMN given_up_at timestamptz;
ALTER TABLE alert_notifications
    ADD CONSTRAINT alert_notifications_sent_or_given_up
    CHECK (sent_at IS NULL OR given_up_at IS NULL);

-- What each target still has to send, in order (a target's sender reads only its own).
DROP INDEX alert_notifications_due;
CREATE INDEX alert_notifications_pending ON alert_notifications (target, id)
    WHERE sent_at IS NULL AND given_up_at IS NULL;
-- Given-up rows are kept as long as sent ones, then deleted.
CREATE INDEX alert_notifications_given_up ON alert_notifications (given_up_at)
    WHERE given_up_at IS NOT NULL;
