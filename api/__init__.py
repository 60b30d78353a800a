"""HTTP API: device status, analytics, HTTP ingest, health, metrics and docs."""
