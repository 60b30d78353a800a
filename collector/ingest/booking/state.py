"""A register device's state as the booking reads it, and the cache of what was written.

A device's state is its current row: the latest reading with its booking, the chain before
it, and a ``version`` every write increments (the compare-and-set of ``sql``). The booker
keeps each state as it last wrote it (:class:`StateCache`), so an in-order batch reads
nothing before it writes; a state moved elsewhere is noticed by its version. All types here
are made per reading or device and batch, so they are flat and cheap to build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from collector.ingest.booking.registers import (
    PENDING,
    Booked,
    Booking,
    Chain,
    Point,
    Quality,
    Replacement,
)
from collector.ingest.readings import Reading

#: States kept in memory per stream; beyond this the cache starts over (only a shortcut).
CACHE_DEVICES = 200_000
PENDING_VALUES = frozenset(q.value for q in PENDING)
OK = Quality.OK.value


@dataclass(slots=True)
class Stored:
    """A history row (or a state's latest reading) as the booking reads it."""

    ts: datetime
    register: float | None
    kwh: float
    quality: str | None
    level: float | None
    level_ts: datetime | None

    @property
    def point(self) -> Point:
        return Point(self.ts, self.register, self.kwh)

    @property
    def chain(self) -> Chain:
        return Chain(self.level, self.level_ts)

    @property
    def pending(self) -> bool:
        return self.quality in PENDING_VALUES

    def same(self, booking: Booking) -> bool:
        quality = booking.quality.value if booking.quality else None
        return (
            abs(self.kwh - booking.kwh) < 1e-12
            and self.quality == quality
            and self.level == booking.chain.level
            and self.level_ts == booking.chain.level_ts
        )

    @classmethod
    def of(cls, point: Point, booking: Booking) -> Stored:
        quality = booking.quality.value if booking.quality else None
        return cls(
            point.ts, point.register, booking.kwh, quality, booking.chain.level,
            booking.chain.level_ts,
        )  # fmt: skip


@dataclass(slots=True)
class Latest:
    """A device's latest reading with its booking, and the reading before it with the
    chain after that one (what a pending latest reading is booked again from once the next
    one arrives). Never changed once made (plain, not frozen: made per reading)."""

    last: Stored | None
    prev_ts: datetime | None = None
    prev_level: float | None = None
    prev_level_ts: datetime | None = None

    @property
    def prev_chain(self) -> Chain:
        return Chain(self.prev_level, self.prev_level_ts)


@dataclass(slots=True)
class State:
    """A register device's state: its current row (the latest reading with its booking,
    and the chain before it) as of ``version`` (0: no row yet), and its
    ``register_devices`` row (``known``; what is owed). Flat, and never changed once made:
    one is made per device and batch, so it costs one allocation."""

    version: int
    ts: datetime | None = None
    register: float | None = None
    kwh: float = 0.0
    quality: str | None = None
    level: float | None = None
    level_ts: datetime | None = None
    prev_ts: datetime | None = None
    prev_level: float | None = None
    prev_level_ts: datetime | None = None
    known: bool = False
    dirty_from: datetime | None = None
    replacements: tuple[Replacement, ...] = ()

    @property
    def latest(self) -> Latest:
        last = None
        if self.ts is not None:
            last = Stored(self.ts, self.register, self.kwh, self.quality, self.level, self.level_ts)
        return Latest(last, self.prev_ts, self.prev_level, self.prev_level_ts)

    def moved(self, latest: Latest) -> State:
        """What writing it makes of this state: one version on, at ``latest``."""
        last = latest.last
        if last is None:
            return self.written()
        return State(
            self.version + 1, last.ts, last.register, last.kwh, last.quality, last.level,
            last.level_ts, latest.prev_ts, latest.prev_level, latest.prev_level_ts, True,
            None, self.replacements,
        )  # fmt: skip

    def written(self) -> State:
        """Written where it stands (its row one version on, if it has one)."""
        return State(
            self.version + 1 if self.ts is not None else self.version, self.ts, self.register,
            self.kwh, self.quality, self.level, self.level_ts, self.prev_ts, self.prev_level,
            self.prev_level_ts, True, None, self.replacements,
        )  # fmt: skip


@dataclass(slots=True)
class Plan:
    """What one kind's part of a batch books."""

    #: the states the bookings were made from, by device (each is written back, versioned)
    handled: dict[str, State] = field(default_factory=dict)
    #: id(reading) -> what it books, for the new readings of register devices (by object,
    #: not by (device, ts): hashing a fresh aware datetime costs microseconds)
    booked: dict[int, Booked] = field(default_factory=dict)
    #: (device, ts) -> what it books, as the booking from the chain or history makes it
    new: dict[tuple[str, datetime], Booked] = field(default_factory=dict)
    #: devices whose newest row is in the batch (the current upsert writes them)
    moving: set[str] = field(default_factory=set)
    #: stored rows whose booking changed: (device, ts, booking)
    changed: list[tuple[str, datetime, Booking]] = field(default_factory=list)
    #: devices whose latest reading (or the chain before it) moved: their states after
    after: dict[str, State] = field(default_factory=dict)

    def qualities(self) -> list[str | None]:
        return [b[1] for b in self.booked.values()] + [
            b.quality.value if b.quality else None for _, _, b in self.changed
        ]


def latest(last: Stored, prev_ts: datetime | None, prev_chain: Chain) -> Latest:
    return Latest(last, prev_ts, prev_chain.level, prev_chain.level_ts)


class StateCache:
    """Per stream, each register device's state as this booker last wrote (or read) it."""

    def __init__(self, streams: list[str]) -> None:
        self._states: dict[str, dict[str, State]] = {name: {} for name in streams}

    def get(self, stream: str, device: str) -> State | None:
        return self._states[stream].get(device)

    def remember(self, stream: str, plan: Plan) -> None:
        """The states as the statement just wrote them (one version on)."""
        cache, after = self._states[stream], plan.after
        if len(cache) > CACHE_DEVICES:
            cache.clear()
        for device, old in plan.handled.items():
            state = after.get(device)
            cache[device] = state if state is not None else old.written()

    def forget(self, stream: str, devices: list[str] | set[str]) -> None:
        cache = self._states[stream]
        for device in devices:
            cache.pop(device, None)

    def forget_readings(self, stream: str, readings: list[Reading]) -> None:
        """Forget the devices of ``readings`` (their states moved in a way not tracked)."""
        cache = self._states[stream]
        for r in readings:
            cache.pop(r.device_id, None)
