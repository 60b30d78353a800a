"""What the writer commits at once, and what the commit says: both keyed by stream.

A :class:`Batch` is the chunks the writer took, merged: per stream its readings, each with
the time its message was received, and the dead letters. ``store`` writes a batch of
interval readings in one statement; ``booking`` writes one with register readings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from operator import attrgetter, is_not

from collector.ingest.readings import Reading, Rejection
from collector.ingest.streams import STREAMS, stream_of

#: Per stream, the register of a reading (read in C: no property call per reading).
_REGISTERS = {name: attrgetter(s.register_field) for name, s in STREAMS.items()}
_is_not_none = partial(is_not, None)


@dataclass(slots=True)
class Rows:
    """One stream's readings in a batch, and when each one's message was received (also as
    epoch seconds, what the statements take: converted once per chunk, not per row)."""

    readings: list[Reading] = field(default_factory=list)
    received: list[datetime] = field(default_factory=list)
    received_epochs: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.readings)

    def extend(self, readings: list[Reading], received_at: datetime) -> None:
        n = len(readings)
        self.readings.extend(readings)
        self.received.extend([received_at] * n)
        self.received_epochs.extend([received_at.timestamp()] * n)

    def add(self, reading: Reading, received_at: datetime) -> None:
        self.readings.append(reading)
        self.received.append(received_at)
        self.received_epochs.append(received_at.timestamp())


def _every_stream() -> dict[str, Rows]:
    return {name: Rows() for name in STREAMS}


@dataclass(slots=True)
class Batch:
    """Rows to write together: per stream (every stream of the catalogue has its entry,
    perhaps empty), and the dead letters."""

    rows: dict[str, Rows] = field(default_factory=_every_stream)
    rejected: list[Rejection] = field(default_factory=list)
    rejected_received: list[datetime] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        readings: Iterable[Reading] = (),
        received_at: datetime | None = None,
        rejected: Iterable[Rejection] = (),
    ) -> Batch:
        """A batch of these readings and dead letters, all received at ``received_at``."""
        batch = cls()
        for reading in readings:
            assert received_at is not None
            batch.rows[stream_of(reading).name].add(reading, received_at)
        for rejection in rejected:
            assert received_at is not None
            batch.rejected.append(rejection)
            batch.rejected_received.append(received_at)
        return batch

    def __len__(self) -> int:
        return self.readings + len(self.rejected)

    @property
    def readings(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    @property
    def has_registers(self) -> bool:
        """Whether a reading carries a register (it must be booked: ``booking``)."""
        return any(
            any(map(_is_not_none, map(_REGISTERS[name], rows.readings)))
            for name, rows in self.rows.items()
        )

    def halves(self) -> tuple[Batch, Batch]:
        """Split in two, to isolate a row the database refuses (rare: no fast path needed)."""
        items: list[tuple[str | None, Reading | Rejection, datetime]] = [
            (name, reading, received)
            for name, rows in self.rows.items()
            for reading, received in zip(rows.readings, rows.received, strict=True)
        ]
        items += [
            (None, r, at) for r, at in zip(self.rejected, self.rejected_received, strict=True)
        ]
        mid = len(items) // 2
        return Batch._of_items(items[:mid]), Batch._of_items(items[mid:])

    @classmethod
    def _of_items(cls, items: list[tuple[str | None, Reading | Rejection, datetime]]) -> Batch:
        batch = cls()
        for name, item, received in items:
            if name is None:
                assert isinstance(item, Rejection)
                batch.rejected.append(item)
                batch.rejected_received.append(received)
            else:
                assert not isinstance(item, Rejection)
                batch.rows[name].add(item, received)
        return batch


def _zeros() -> dict[str, int]:
    return dict.fromkeys(STREAMS, 0)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a batch's commit did, per stream."""

    #: Readings that were new in the history (the others were stored already).
    new: Mapping[str, int] = field(default_factory=_zeros)
    #: Dead letters written (for readings the database refused too).
    rejected: int = 0
    #: Readings the database would not take, stored as dead letters instead (``rejected``
    #: counts their dead letters too).
    dead: Mapping[str, int] = field(default_factory=_zeros)
    #: Register devices whose bookings these rows change (booked again after the commit).
    dirty: int = 0

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            {s: self.new.get(s, 0) + other.new.get(s, 0) for s in STREAMS},
            self.rejected + other.rejected,
            {s: self.dead.get(s, 0) + other.dead.get(s, 0) for s in STREAMS},
            self.dirty + other.dirty,
        )

    @property
    def stored(self) -> int:
        """New readings, every stream."""
        return sum(self.new.values())
