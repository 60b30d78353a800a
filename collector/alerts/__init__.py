"""Alerts: rules evaluated over the stored state, pending -> firing -> resolved in the
database, notifications on transitions from an outbox (docs/alerts.md)."""
