"""The daemon's own view of its health, read by /health (and nothing else)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DaemonHealth:
    broker_connected: bool
    broker_error: str | None
    writer_ok: bool
    writer_error: str | None
    buffer_depth: int
    buffer_capacity: int
    last_commit_at: float | None  # time.time()
    #: The writer's last error will not pass by waiting; ``writer_hint`` says what to do.
    writer_permanent: bool = False
    writer_hint: str | None = None
