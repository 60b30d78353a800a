"""Prometheus metrics of the collector, in a registry of its own (passed, not global).

Counters are incremented per chunk or per batch (``inc(n)``), never per message: the hot
path stays free of per-message bookkeeping.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# Without this every counter has a twin `_created` series with its creation time: noise.
disable_created_metrics()

_FLUSH_SIZES = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000)
_LATENCIES = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Every metric the collector exports; ``registry`` is what ``/metrics`` serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.mapped = Counter(
            "collector_mapped_messages",
            "Messages of a payload mapping (SOURCES_FILE), by source and outcome: stored, "
            "ignored (retained, not selected by when, no energy in it), dead_lettered.",
            ["source", "outcome"],
            registry=r,
        )
        self.received = Counter(
            "collector_messages_received",
            "Messages taken from a source.",
            ["source"],
            registry=r,
        )
        self.stored = Counter(
            "collector_readings_stored",
            "Readings committed as new history rows.",
            ["kind"],
            registry=r,
        )
        self.duplicates = Counter(
            "collector_readings_duplicate",
            "Readings absorbed because (device, timestamp) was already stored.",
            ["kind"],
            registry=r,
        )
        self.rejected = Counter(
            "collector_messages_rejected",
            "Messages written to the dead-letter table.",
            ["reason"],
            registry=r,
        )
        self.flush_size = Histogram(
            "collector_flush_size",
            "Items per committed batch.",
            buckets=_FLUSH_SIZES,
            registry=r,
        )
        self.flush_seconds = Histogram(
            "collector_flush_seconds",
            "Time to commit one batch.",
            buckets=_LATENCIES,
            registry=r,
        )
        self.commit_lag = Histogram(
            "collector_commit_lag_seconds",
            "From receiving a message to committing it (oldest message of each chunk).",
            buckets=_LATENCIES,
            registry=r,
        )
        self.reading_age = Gauge(
            "collector_last_commit_reading_age_seconds",
            "Age of the newest reading's own timestamp at its commit (device to database).",
            registry=r,
        )
        self.db_errors = Counter(
            "collector_db_errors",
            "Failed batch writes, by how they were handled.",
            ["kind"],
            registry=r,
        )
        self.buffer_depth = Gauge(
            "collector_buffer_depth", "Items accepted and not yet committed.", registry=r
        )
        self.buffer_capacity = Gauge(
            "collector_buffer_capacity", "Most items held before sources wait.", registry=r
        )
        self.mqtt_connected = Gauge(
            "collector_mqtt_connected", "1 while connected to the broker.", registry=r
        )
        self.mqtt_connects = Counter(
            "collector_mqtt_connects", "Successful connections to the broker.", registry=r
        )
        self.register_bookings = Counter(
            "collector_register_bookings",
            "Register readings booked (or booked again) as something other than a plain "
            "increment: baseline, dip, glitch, reset, rollover, quarantined, shift, replaced, "
            "pending_drop, pending_jump.",
            ["kind", "quality"],
            registry=r,
        )
        self.mqtt_unacked_dropped = Counter(
            "collector_mqtt_acks_skipped",
            "Committed messages whose connection was gone before the PUBACK (redelivered).",
            registry=r,
        )

        # --- alerts (collector/alerts): aggregates only, never a series per device
        self.alerts_firing = Gauge(
            "collector_alerts_firing",
            "Alerts firing now, by rule and severity (set by the evaluating instance).",
            ["rule", "severity"],
            registry=r,
        )
        self.alerts_leader = Gauge(
            "collector_alerts_leader",
            "1 while this instance evaluates the alert rules (one instance at a time).",
            registry=r,
        )
        self.alert_evaluation_seconds = Histogram(
            "collector_alert_evaluation_seconds",
            "Time of one evaluation pass over every rule.",
            buckets=_LATENCIES,
            registry=r,
        )
        self.alert_evaluation_errors = Counter(
            "collector_alert_evaluation_errors",
            "Evaluation passes that failed (and are tried again at the next interval).",
            registry=r,
        )
        self.alert_notifications_sent = Counter(
            "collector_alert_notifications_sent",
            "Alert notifications delivered, by target (webhook, mqtt, alertmanager).",
            ["target"],
            registry=r,
        )
        self.alert_notifications_failed = Counter(
            "collector_alert_notifications_failed",
            "Alert notification deliveries that failed and wait for a retry, by target.",
            ["target"],
            registry=r,
        )
        self.alert_notifications_given_up = Counter(
            "collector_alert_notifications_given_up",
            "Alert notifications not delivered within ALERT_GIVE_UP_S, given up, by target.",
            ["target"],
            registry=r,
        )
        self.alert_notifications_undeliverable = Gauge(
            "collector_alert_notifications_undeliverable",
            "Unsent alert notifications of a target no longer configured, by its outbox key.",
            ["key"],
            registry=r,
        )
        self.ocpp_connected = Gauge(
            "collector_ocpp_connected_chargers",
            "Chargers connected to the OCPP listener now.",
            registry=r,
        )
        self.ocpp_refused = Counter(
            "collector_ocpp_refused",
            "OCPP connections refused at the upgrade, by reason.",
            ["reason"],
            registry=r,
        )
        self.ocpp_relay_backlog = Gauge(
            "collector_ocpp_relay_backlog",
            "Relay mode: frames copied for metering and not recorded yet (OCPP_RELAY_BACKLOG "
            "at most).",
            registry=r,
        )
        self.ocpp_relay_dropped = Counter(
            "collector_ocpp_relay_dropped",
            "Relay mode: frames forwarded to the CSMS but not recorded (the backlog was full).",
            registry=r,
        )

    def stored_total(self) -> int:
        """Readings stored by this process so far (both kinds)."""
        return _total(self.stored)

    def rejected_total(self) -> int:
        """Messages dead-lettered by this process so far (every reason)."""
        return _total(self.rejected)


def _total(counter: Counter) -> int:
    """A counter's value summed over its labels."""
    return int(
        sum(
            sample.value
            for metric in counter.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )
    )
