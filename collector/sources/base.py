"""What a source is to the daemon: a small protocol, run and stopped the same way for all.

A source receives messages over a transport (an MQTT session, HTTP requests, next an OCPP
WebSocket), decodes them into items and hands them to the sink (``collector.ingest.sink``),
acknowledging them only once the sink's commit callback runs. The daemon builds its sources
by name (``registry``), runs each one as a task, and stops them in two steps: ``stop_taking``
(no new input; keep what is needed to acknowledge what was taken), then, once the writer has
committed or given up everything, ``release`` (disconnect).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from collector.ingest.sink import Item


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """What ``/health`` says of a source: connected (None: it has no connection of its
    own), and its last error."""

    connected: bool | None
    error: str | None = None


class Source(Protocol):
    """A way readings come in."""

    @property
    def name(self) -> str:
        """Short and stable: the source's label in metrics and logs (``mqtt``, ``http``)."""
        ...

    async def run(self) -> None:
        """Take input until stopped; a loop that never dies on its own (it reconnects)."""
        ...

    def stop_taking(self) -> None:
        """Take no more input; keep what is needed to acknowledge what was taken."""
        ...

    def release(self) -> None:
        """Everything taken is committed (or given up): disconnect, and let ``run`` return."""
        ...

    def health(self) -> SourceHealth: ...


class Decoder(Protocol):
    """Turns one received message into items for the sink: the native JSON contract is
    one decoder, a payload mapping (a device family's shape) another. No I/O; an item that
    cannot be a reading carries its problem, so it is dead-lettered with the reason."""

    def decode(self, address: str, payload: bytes) -> Sequence[Item]:
        """The items of one message received at ``address`` (an MQTT topic)."""
        ...
