"""Cumulative energy registers: what each register reading books, decided from its neighbours.

Most devices report a running total (a meter's import register, a charger's
``Energy.Active.Import.Register``), not the energy of an interval. A register reading at
time t whose predecessor (same device, latest earlier reading) stands at ``level`` books the
energy ``R - level`` for the interval ending at t, exactly what an interval reading with
that kWh means. Real registers misbehave, and every system that subtracts naively books
phantom energy (docs/registers.md). The rules, for one device's readings in time order:

* the first register reading (or the first after an interval reading) is a **baseline**:
  nothing is booked, it only sets the level;
* ``R >= level`` by at most ``max_kw`` x the time since the level was set: **ok**, books
  ``R - level``;
* more than that: **implausible**. If the next reading continues from R, the register
  really moved there (a **shift**: R becomes the new level, nothing booked); else R is
  **quarantined**: nothing booked, and the level stays where it was;
* ``R`` below the level by at most ``dip_kwh``: a **dip** (noise): held, nothing booked,
  the level stays (never negative, never counted twice);
* further below: with ``wrap_kwh`` set and ``R + wrap_kwh - level`` plausible, a
  **rollover**, which books that; else a **glitch** if the next reading is back on the old
  level (nothing booked, the level stays), or, if it is not, a **reset** when R itself is
  plausible since the level was set (the register restarted from 0: R is booked, and R is
  the new level), a **shift** when it is not (the register was set back, a re-sync:
  nothing booked, R is the new level). No reading ever books more than ``max_kw`` x the
  time since the level was set;
* until the next reading decides a drop or a jump, it is **pending** (``pending_drop``,
  ``pending_jump``): nothing booked yet, and the API says so;
* a recorded meter **replacement** between two readings makes them one continuous history:
  the old register's tail up to ``final_kwh`` (when it is plausible since the last level;
  a doubtful final value books no tail), then the new one from ``start_kwh``.

:func:`book` is a pure function of the device's sorted readings (and replacements), so the
final bookings, and the hourly rollups summed from them, are the same whatever order the
readings arrived in: a late reading is booked by recomputing its neighbourhood.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collector.settings import Settings


class Quality(enum.StrEnum):
    """What a register reading was taken for; stored with it and counted per hour."""

    BASELINE = "baseline"
    OK = "ok"
    DIP = "dip"
    GLITCH = "glitch"
    RESET = "reset"
    ROLLOVER = "rollover"
    QUARANTINED = "quarantined"
    SHIFT = "shift"
    REPLACED = "replaced"
    PENDING_DROP = "pending_drop"
    PENDING_JUMP = "pending_jump"


#: Decided only once the next reading is known.
PENDING = frozenset({Quality.PENDING_DROP, Quality.PENDING_JUMP})
#: The hourly rollups' register counters, and the qualities each counts.
COUNTERS: dict[str, tuple[Quality, ...]] = {
    "register_resets": (Quality.RESET,),
    "register_glitches": (Quality.GLITCH,),
    "register_quarantined": (Quality.QUARANTINED,),
    "register_dips": (Quality.DIP,),
    "register_rollovers": (Quality.ROLLOVER,),
    "register_shifts": (Quality.SHIFT,),
    "register_pending": (Quality.PENDING_DROP, Quality.PENDING_JUMP),
}


def counted(counter: str, column: str = "register_quality") -> str:
    """The SQL condition under which a row counts for a rollup ``counter``
    (``register_readings``: any register reading)."""
    if counter == "register_readings":
        return f"{column} IS NOT NULL"
    names = ", ".join(f"'{q.value}'" for q in COUNTERS[counter])
    return f"{column} IN ({names})"


@dataclass(frozen=True, slots=True)
class RegisterLimits:
    """The settings the rules read (REGISTER_DIP_KWH, REGISTER_MAX_KW, REGISTER_WRAP_KWH)."""

    dip_kwh: float
    max_kw: float
    wrap_kwh: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RegisterLimits:
        return cls(
            dip_kwh=settings.register_dip_kwh,
            max_kw=settings.register_max_kw,
            wrap_kwh=settings.register_wrap_kwh or None,
        )

    def plausible(self, kwh: float, since: datetime, until: datetime) -> bool:
        """Whether a device could draw ``kwh`` between the two times."""
        hours = max((until - since).total_seconds(), 0.0) / 3600
        return kwh <= self.max_kw * hours + 1e-9


#: The limits with the settings' defaults (for tests and tools that do not set them).
DEFAULT_LIMITS = RegisterLimits(dip_kwh=0.05, max_kw=400.0)


@dataclass(frozen=True, slots=True)
class Point:
    """One reading of a device: a register reading (``register``), or an interval one
    (``register`` None, ``kwh`` its own energy), which breaks the chain of registers."""

    ts: datetime
    register: float | None
    kwh: float = 0.0


@dataclass(frozen=True, slots=True)
class Chain:
    """Where the register stands after a reading: ``level`` (None: no baseline yet) and
    when that level was set."""

    level: float | None = None
    level_ts: datetime | None = None


@dataclass(frozen=True, slots=True)
class Booking:
    """What a reading books, what it was taken for, and the chain after it."""

    kwh: float
    quality: Quality | None  # None: an interval reading
    chain: Chain

    @property
    def pending(self) -> bool:
        return self.quality in PENDING


@dataclass(frozen=True, slots=True)
class Replacement:
    """A meter (or telematics unit) replaced at ``at``: the old register ended at
    ``final_kwh`` (if known), the new one began at ``start_kwh`` (if known)."""

    at: datetime
    final_kwh: float | None = None
    start_kwh: float | None = None


def book(
    points: Sequence[Point],
    limits: RegisterLimits,
    *,
    start: Chain = Chain(),  # frozen: one shared default is safe
    previous_ts: datetime | None = None,
    after: Point | None = None,
    replacements: Sequence[Replacement] = (),
) -> list[Booking]:
    """Book ``points`` (one device, in time order, distinct times).

    ``start`` is the chain after the reading before the first point (at ``previous_ts``);
    ``after`` is the first reading after the last point, when there is one (it decides a
    last drop or jump; it is not booked here).
    """
    out: list[Booking] = []
    chain = start
    prev_ts = previous_ts
    for i, point in enumerate(points):
        nxt = points[i + 1] if i + 1 < len(points) else after
        if point.register is None:  # an interval reading: its own energy; registers start over
            booking = Booking(point.kwh, None, Chain())
        else:
            chain, tail, replaced = _cross(chain, prev_ts, point.ts, replacements, limits)
            booking = _book_register(point, point.register, chain, nxt, limits)
            if replaced and booking.quality in (Quality.OK, Quality.BASELINE):
                booking = Booking(booking.kwh, Quality.REPLACED, booking.chain)
            if tail:
                booking = Booking(booking.kwh + tail, booking.quality, booking.chain)
        out.append(booking)
        chain = booking.chain
        prev_ts = point.ts
    return out


def _cross(
    chain: Chain,
    prev_ts: datetime | None,
    ts: datetime,
    replacements: Sequence[Replacement],
    limits: RegisterLimits,
) -> tuple[Chain, float, bool]:
    """The chain after the replacements between the previous reading and this one, the old
    registers' tails they book, and whether there was one."""
    tail = 0.0
    replaced = False
    for r in replacements:
        if (prev_ts is None or prev_ts < r.at) and r.at < ts:
            level, since = chain.level, chain.level_ts
            if (
                r.final_kwh is not None
                and level is not None
                and since is not None
                and r.final_kwh >= level
                and limits.plausible(r.final_kwh - level, since, r.at)
            ):  # an old register's tail that could have flowed (a doubtful one is not booked)
                tail += r.final_kwh - level
            chain, replaced = Chain(r.start_kwh, r.at if r.start_kwh is not None else None), True
    return chain, tail, replaced


def _book_register(
    point: Point, value: float, chain: Chain, nxt: Point | None, limits: RegisterLimits
) -> Booking:
    level, since = chain.level, chain.level_ts
    if level is None or since is None:
        return Booking(0.0, Quality.BASELINE, Chain(value, point.ts))
    if value >= level:
        if limits.plausible(value - level, since, point.ts):
            return Booking(value - level, Quality.OK, Chain(value, point.ts))
        jump = _jump(point, value, nxt, limits)
        return Booking(0.0, jump, Chain(value, point.ts) if jump is Quality.SHIFT else chain)
    return _fall(point, value, level=level, since=since, nxt=nxt, limits=limits)


def _fall(
    point: Point,
    value: float,
    *,
    level: float,
    since: datetime,
    nxt: Point | None,
    limits: RegisterLimits,
) -> Booking:
    """A register below its level: a dip, a rollover, a glitch or a reset."""
    kept = Chain(level, since)
    if value >= level - limits.dip_kwh:
        return Booking(0.0, Quality.DIP, kept)
    if limits.wrap_kwh is not None:
        wrapped = value + limits.wrap_kwh - level
        if wrapped >= 0 and limits.plausible(wrapped, since, point.ts):
            return Booking(wrapped, Quality.ROLLOVER, Chain(value, point.ts))
    drop = _drop(level, nxt, limits)
    if drop is Quality.RESET:
        if limits.plausible(value, since, point.ts):  # restarted from 0: R used since
            return Booking(value, drop, Chain(value, point.ts))
        # Too much to have flowed since: the register was set back (a re-sync), not
        # restarted. It goes on from there; nothing is booked.
        return Booking(0.0, Quality.SHIFT, Chain(value, point.ts))
    return Booking(0.0, drop, kept)


def _continued(point: Point, value: float, nxt: Point | None, limits: RegisterLimits) -> bool:
    """After a jump: the next reading goes on from the new value."""
    if nxt is None or nxt.register is None:
        return False
    return nxt.register >= value - limits.dip_kwh and limits.plausible(
        nxt.register - value, point.ts, nxt.ts
    )


def _jump(point: Point, value: float, nxt: Point | None, limits: RegisterLimits) -> Quality:
    if nxt is None:
        return Quality.PENDING_JUMP  # undecided while nothing follows
    if _continued(point, value, nxt, limits):
        return Quality.SHIFT
    return Quality.QUARANTINED  # an interval reading next cannot vouch for it either


def _drop(level: float, nxt: Point | None, limits: RegisterLimits) -> Quality:
    if nxt is None:
        return Quality.PENDING_DROP
    if nxt.register is None or nxt.register >= level - limits.dip_kwh:
        return Quality.GLITCH  # back on the old level (or nothing to tell): no reset
    return Quality.RESET


#: What a reading books, as the writer stores it: (kWh, quality, level, level_ts).
Booked = tuple[float, str | None, float | None, datetime | None]


def booked(booking: Booking) -> Booked:
    quality = booking.quality.value if booking.quality is not None else None
    return (booking.kwh, quality, booking.chain.level, booking.chain.level_ts)


def increment(
    value: float,
    ts: datetime,
    level: float | None,
    level_ts: datetime | None,
    limits: RegisterLimits,
) -> Booked | None:
    """The common case, without building a :class:`Booking`: one register reading right
    after a settled one (not pending, no replacement between), booked as :func:`book` would:
    a baseline after no level, or a plausible rise. None: anything else (use ``book``)."""
    if level is None or level_ts is None:
        return (0.0, "baseline", value, ts)
    if value >= level:
        hours = max((ts - level_ts).total_seconds(), 0.0) / 3600
        if value - level <= limits.max_kw * hours + 1e-9:
            return (value - level, "ok", value, ts)
    return None
