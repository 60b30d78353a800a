"""Booking from the history: readings that are not newer than everything stored.

A late reading (or a device marked dirty) is booked with its neighbourhood: from the stored
reading before it, page by page, until the bookings agree with the stored ones again. What
changes is collected in the plan; the booker writes it.
"""

from __future__ import annotations

from datetime import datetime

from collector.db.connection import Connection
from collector.ingest.booking.registers import Chain, Point, RegisterLimits, book, booked
from collector.ingest.booking.sql import ROW_SQL, stored
from collector.ingest.booking.state import Latest, Plan, State, Stored, latest
from collector.ingest.streams import Stream

#: Rows read at a time when a late reading's neighbourhood is booked again.
PAGE = 500


async def book_from_history(
    conn: Connection,
    t: Stream,
    limits: RegisterLimits,
    plan: Plan,
    *,
    device: str,
    state: State,
    new: list[Point],
    earliest: datetime,
) -> None:
    """Book ``new`` (and again what they change) from the history around them.

    Starts at the reading before ``earliest`` (a late reading may decide whether its
    predecessor was a glitch or a reset), from the chain stored after the one before
    that, and goes on until the bookings agree with the stored ones again.
    """
    select = ROW_SQL[t.name]
    before = [
        stored(r)
        for r in await conn.fetch(
            select + " AND ts < $2 ORDER BY ts DESC LIMIT 2", device, earliest
        )
    ]
    start, previous_ts = Chain(), None
    if len(before) == 2:
        start, previous_ts = before[1].chain, before[1].ts
    cursor = before[0].ts if before else earliest
    new_by_ts = {p.ts: p for p in new}
    pending_new = sorted(new_by_ts)
    last_new = pending_new[-1] if pending_new else earliest
    stored_last = state.latest.last
    # The reading before the one being booked, and the chain after it.
    prior: tuple[datetime | None, Chain] = (previous_ts, start)
    newest: Latest | None = None
    inclusive = True
    while True:
        op = ">=" if inclusive else ">"
        rows = [
            stored(r)
            for r in await conn.fetch(
                select + f" AND ts {op} $2 ORDER BY ts LIMIT {PAGE + 1}", device, cursor
            )
        ]
        inclusive = False
        more = len(rows) > PAGE
        page = rows[:PAGE]
        stored_ts = {r.ts for r in page}
        limit = page[-1].ts if more else None
        sequence: list[tuple[Point, Stored | None]] = [(r.point, r) for r in page]
        for ts in [ts for ts in pending_new if limit is None or ts <= limit]:
            if ts not in stored_ts:  # a duplicate of a stored reading is absorbed
                sequence.append((new_by_ts[ts], None))
        pending_new = [ts for ts in pending_new if limit is not None and ts > limit]
        sequence.sort(key=lambda item: item[0].ts)
        after = rows[PAGE].point if more else None
        if after is not None and pending_new and pending_new[0] < after.ts:
            after = new_by_ts[pending_new[0]]
        bookings = book(
            [p for p, _ in sequence],
            limits,
            start=start,
            previous_ts=previous_ts,
            after=after,
            replacements=state.replacements,
        )
        for (point, kept), booking in zip(sequence, bookings, strict=True):
            newest = latest(Stored.of(point, booking), *prior)
            if kept is None:
                plan.new[(device, point.ts)] = booked(booking)
            elif not kept.same(booking):
                plan.changed.append((device, point.ts, booking))
            elif point.ts > last_new and point.ts > earliest:
                # Agrees with what is stored past every new reading: the rest is
                # unchanged. If this is the latest reading, what precedes it may not be.
                if stored_last is not None and point.ts == stored_last.ts:
                    plan.after[device] = state.moved(newest)
                return
            prior = (point.ts, booking.chain)
        if not more:
            break
        start, previous_ts = bookings[-1].chain, sequence[-1][0].ts
        cursor = page[-1].ts
    if newest is not None:
        plan.after[device] = state.moved(newest)
