"""Booking register readings in the database: from a device's state, or its history.

A register reading's energy depends on its neighbours (collector/ingest/registers.py), so
writing one is more than an insert. A device's state is its current row (the latest reading,
its booking, the chain before it, a ``version``). For a batch with register readings:

1. each register device's state: from memory (the booker keeps what it last wrote), else
   read, without a lock;
2. each device's new readings booked: from its state when they are newer than everything
   stored (the usual case: no history is read, and one reading after a settled one is
   booked without building objects); else from the history around them, until the
   bookings agree with what is stored again (a late reading splits one interval in two);
3. one statement inserts the rows with their bookings (collector/ingest/store.py), upserts
   the current rows and writes each state **only if its version is still the one the
   bookings were made from** (compare-and-set). If another collector of a shared
   subscription, the rebooker or an interval reading moved a state meanwhile, the
   statement fails as a whole (SQLSTATE RS001, sql/006) and the batch is booked again from
   fresh states: one device's readings are never booked from an old state, and nothing
   waits on a lock;
4. only when stored rows' bookings changed (a late reading): in the same transaction they
   are updated, and the rollups of their hours computed again from the history.

Devices marked ``register_devices.dirty_from`` (a late interval reading among register
readings, a replacement recorded afterwards) are booked again from that time by
:meth:`RegisterBooker.rebook_dirty`, which the rebooker runs after a batch that marked some
and every second. docs/registers.md has the design and its cost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from collector.db.connection import Connection
from collector.ingest.readings import MeterReading, VehicleReading
from collector.ingest.registers import (
    PENDING,
    Booked,
    Booking,
    Chain,
    Point,
    Quality,
    Replacement,
    Rules,
    book,
    booked,
    increment,
)
from collector.ingest.store import (
    COUNTS,
    METER,
    PREVIOUS_COLUMNS,
    VEHICLE,
    Batch,
    HistoryTable,
    WriteResult,
    array_rows,
    epochs,
    history_sql,
    rejected_sql,
    rollup_aggregates,
    rollup_columns,
    unnest_arrays,
    write_batch,
)
from collector.metrics import Metrics

log = structlog.get_logger("collector.registers")

Reading = MeterReading | VehicleReading
#: Rows read at a time when a late reading's neighbourhood is booked again.
PAGE = 500
#: Raised by ``register_states_written`` (sql/006) when a state moved under a booking.
STATE_MOVED = "RS001"
#: Times a batch is booked again from fresh states before the error goes to the writer.
ATTEMPTS = 5
#: States kept in memory; beyond this the cache starts over (it is only a shortcut).
CACHE_DEVICES = 200_000
_PENDING = frozenset(q.value for q in PENDING)
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
        return self.quality in _PENDING

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


# --- statements ----------------------------------------------------------------------------
#
# Per kind, the arrays after the readings and dead letters: the devices whose newest row is
# in the batch ("moving": i, v; the upsert of the current rows writes them), the other
# handled devices ("staying": i, v, a, pt, pl, plt; ``a``: the chain before the latest
# reading changed, times as epoch seconds), the devices new to registers (i), and the dirty
# marks worked off (i, d).
_MOVING = (["i", "v"], ["text", "int8"])
_STAYING = (
    ["i", "v", "a", "pt", "pl", "plt"],
    ["text", "int8", "bool", "float8", "float8", "float8"],
)
_NEW = (["i"], ["text"])
_CLEANED = (["i", "d"], ["text", "timestamptz"])


@dataclass(frozen=True, slots=True)
class StateWrite:
    """One kind's handled devices, written compare-and-set: their current rows only from
    the version the bookings were made from. ``written`` counts the rows that were."""

    ctes: str
    expected: str
    written: str
    #: every handled device, as a subquery (their interval rows are booked, not marked)
    handled: str
    #: the staying devices, as a subquery (the current upsert leaves them alone)
    staying: str


def _state_sql(t: HistoryTable, first: int, *, moving: bool) -> tuple[StateWrite, int]:
    kind, d = t.kind, t.device
    nxt = first + len(_MOVING[0]) if moving else first
    staying_src, nxt2 = unnest_arrays(*_STAYING, nxt)
    new_src, nxt3 = unnest_arrays(*_NEW, nxt2)
    cleaned_src, after = unnest_arrays(*_CLEANED, nxt3)
    previous = ("to_timestamp(u.pt)", "u.pl", "to_timestamp(u.plt)")
    keep = ", ".join(
        f"{c} = CASE WHEN u.a THEN {n} ELSE c.{c} END"
        for c, n in zip(PREVIOUS_COLUMNS, previous, strict=True)
    )
    ctes = f"""{kind}_staying AS (
    UPDATE {t.current} c SET {keep}, version = c.version + 1
    FROM {staying_src}
    WHERE c.{d} = u.i AND c.version = u.v
    RETURNING 1
), {kind}_known AS (
    INSERT INTO register_devices (kind, device_id)
    SELECT '{kind}', i FROM {new_src} ORDER BY 2 ON CONFLICT DO NOTHING
), {kind}_cleaned AS (
    UPDATE register_devices s SET dirty_from = NULL FROM {cleaned_src}
    WHERE s.kind = '{kind}' AND s.device_id = u.i AND s.dirty_from = u.d
)"""
    written = f"(SELECT count(*) FROM {kind}_staying)"
    expected = f"cardinality(${nxt}::text[])"
    staying = f"SELECT unnest(${nxt}::text[])"
    handled = staying
    if moving:
        # A moving device's current row was written by the upsert: from the version read
        # if it is now exactly one on (the upsert adds one), or inserted as 1 from none (0).
        written += (
            f" + (SELECT count(*) FROM {kind}_cur x JOIN "
            f"unnest(${first}::text[], ${first + 1}::int8[]) AS w (i, v) "
            "ON w.i = x.device AND x.version = w.v + 1)"
        )
        expected += f" + cardinality(${first}::text[])"
        handled = f"SELECT unnest(${first}::text[]) UNION ALL {staying}"
    return StateWrite(ctes, expected, written, handled, staying), after


def _write_registers_sql() -> str:
    meters, nxt = array_rows(METER, 1, registers=True)
    vehicles, nxt = array_rows(VEHICLE, nxt, registers=True)
    rejected, nxt = rejected_sql(nxt)
    m, nxt = _state_sql(METER, nxt, moving=True)
    v, _ = _state_sql(VEHICLE, nxt, moving=True)
    parts = [
        history_sql(METER, meters, mark_dirty=True, handled=m.handled, staying=m.staying),
        history_sql(VEHICLE, vehicles, mark_dirty=True, handled=v.handled, staying=v.staying),
        rejected,
        m.ctes,
        v.ctes,
    ]
    ctes = ",\n".join(parts)
    return f"""
WITH {ctes}
SELECT {COUNTS},
       register_states_written({m.expected} + {v.expected}, {m.written} + {v.written}) AS states
"""


def _staying_sql(t: HistoryTable) -> str:
    """The rebooker's statement: only staying devices (the arrays after the moving ones)."""
    s, _ = _state_sql(t, 1, moving=False)
    return f"WITH {s.ctes} SELECT register_states_written({s.expected}, {s.written})"


#: A batch with register readings: history with their bookings, current state, rollups,
#: dead letters, interval readings' dirty marks, and the handled devices, compare-and-set.
WRITE_REGISTERS_SQL = _write_registers_sql()
#: The rebooker's: the devices booked again, compare-and-set.
WRITE_STAYING_SQL = {t.kind: _staying_sql(t) for t in (METER, VEHICLE)}


def _states_sql(t: HistoryTable) -> str:
    return f"""
SELECT u.d AS device, c.ts, c.{t.register} AS register, c.{t.kwh} AS kwh, c.register_quality,
       c.register_level, c.register_level_ts, c.register_prev_ts, c.register_prev_level,
       c.register_prev_level_ts, coalesce(c.version, 0) AS version,
       r.device_id IS NOT NULL AS known, r.dirty_from, r.replacement_at
FROM unnest($1::text[]) AS u (d)
LEFT JOIN {t.current} c ON c.{t.device} = u.d
LEFT JOIN register_devices r ON r.kind = '{t.kind}' AND r.device_id = u.d"""


_STATES_SQL = {t.kind: _states_sql(t) for t in (METER, VEHICLE)}


def _row_sql(t: HistoryTable) -> str:
    return (
        f"SELECT ts, {t.register} AS register, {t.kwh} AS kwh, register_quality AS quality, "
        f"register_level AS level, register_level_ts AS level_ts FROM {t.readings} "
        f"WHERE {t.device} = $1"
    )


def _stored(row: asyncpg.Record) -> Stored:
    return Stored(
        row["ts"], row["register"], row["kwh"], row["quality"], row["level"], row["level_ts"]
    )


def _moved(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and exc.sqlstate == STATE_MOVED


class RegisterBooker:
    """Books register readings; the writer's and the import's one way to write a batch.

    Keeps each register device's state as it last wrote it, so an in-order batch reads
    nothing before it writes. A state moved elsewhere is noticed by its version.
    """

    def __init__(self, rules: Rules, metrics: Metrics | None = None) -> None:
        self.rules = rules
        self._metrics = metrics
        #: kind -> device -> state, as this booker last wrote (or read) it
        self._cache: dict[str, dict[str, State]] = {t.kind: {} for t in (METER, VEHICLE)}

    # --- a batch ---------------------------------------------------------------------------

    async def write(self, conn: Connection, batch: Batch, timeout_s: float) -> WriteResult:
        """Write ``batch``, booking its register readings; how many readings were new."""
        if not batch.has_registers:
            result = await write_batch(conn, batch, timeout_s)
            if result.dirty:  # interval readings moved register devices' states
                self._forget(batch)
            return result
        for _ in range(ATTEMPTS - 1):
            try:
                return await self._write(conn, batch, timeout_s)
            except asyncpg.PostgresError as exc:
                if not _moved(exc):
                    raise
                self._forget(batch)
                log.info("registers.state_moved", error=str(exc), hint="booking the batch again")
        return await self._write(conn, batch, timeout_s)

    async def _write(self, conn: Connection, batch: Batch, timeout_s: float) -> WriteResult:
        meters = await self._plan(conn, METER, batch.meters)
        vehicles = await self._plan(conn, VEHICLE, batch.vehicles)
        args = [
            *_arrays(
                batch.meters,
                batch.meters_received,
                meters,
                lambda kwh: [kwh, [r.voltage for r in batch.meters]],
            ),
            *_arrays(
                batch.vehicles,
                batch.vehicles_received,
                vehicles,
                lambda kwh: [
                    [r.soc for r in batch.vehicles],
                    kwh,
                    [r.batteryTemp for r in batch.vehicles],
                ],
            ),
            [r.source for r in batch.rejected],
            [r.reason.value for r in batch.rejected],
            [r.detail for r in batch.rejected],
            [r.payload for r in batch.rejected],
            [r.payload_size for r in batch.rejected],
            epochs(batch.rejected_received),
            *_state_arrays(meters),
            *_state_arrays(vehicles),
        ]
        # One statement is its own transaction; with rows booked again, or inside the
        # import's transaction (a savepoint: a moved state is booked again), one around all.
        if meters.changed or vehicles.changed or conn.is_in_transaction():
            async with conn.transaction():
                row = await conn.fetchrow(WRITE_REGISTERS_SQL, *args, timeout=timeout_s)
                await self._apply(conn, METER, meters)
                await self._apply(conn, VEHICLE, vehicles)
        else:  # one statement: its own transaction
            row = await conn.fetchrow(WRITE_REGISTERS_SQL, *args, timeout=timeout_s)
        assert row is not None
        self._remember(METER, meters)
        self._remember(VEHICLE, vehicles)
        if row["dirty"]:
            self._forget(batch)
        self._count(METER, meters)
        self._count(VEHICLE, vehicles)
        return WriteResult(row["meters"], row["vehicles"], len(batch.rejected), dirty=row["dirty"])

    async def _plan(self, conn: Connection, t: HistoryTable, readings: Sequence[Reading]) -> Plan:
        plan = Plan()
        groups, devices = _by_device(readings)
        if not devices:
            return plan
        states = await self._states(conn, t, devices)
        for device in devices:
            group, state = groups[device], states[device]
            plan.handled[device] = state
            if len(group) == 1 and self._book_settled(plan, device, state, group[0]):
                continue
            owners: dict[datetime, Reading] = {}
            for r in group:
                owners.setdefault(r.timestamp, r)  # a duplicate in the batch: the first
            new = [Point(ts, r.register, r.energy or 0.0) for ts, r in owners.items()]
            if len(new) > 1:
                new.sort(key=lambda p: p.ts)
            last = state.latest.last
            if state.dirty_from is None and (last is None or new[0].ts > last.ts):
                self._book_in_order(plan, device, state, new)
            else:
                earliest = min(new[0].ts, state.dirty_from or new[0].ts)
                await self._book_from_history(
                    conn, t, plan, device, state, new=new, earliest=earliest
                )
            for ts, r in owners.items():
                done = plan.new.get((device, ts))
                if done is not None:
                    plan.booked[id(r)] = done
            moved = plan.after.get(device)
            if moved is not None and (device, moved.ts) in plan.new:
                plan.moving.add(device)
        return plan

    def _book_settled(self, plan: Plan, device: str, state: State, r: Reading) -> bool:
        """The usual case, booked without building objects: one register reading after a
        settled one (not pending, nothing owed, no replacements), or a new device's first.
        False: not that case."""
        value, ts, last_ts = r.register, r.timestamp, state.ts
        if (
            value is None
            or (last_ts is not None and ts <= last_ts)
            or state.dirty_from is not None
            or state.replacements
            or state.quality in _PENDING
        ):
            return False
        done = increment(value, ts, state.level, state.level_ts, self.rules)
        if done is None:
            return False
        plan.booked[id(r)] = done
        plan.moving.add(device)
        plan.after[device] = State(
            state.version + 1, ts, value, done[0], done[1], value, ts, last_ts, state.level,
            state.level_ts, True,
        )  # fmt: skip
        return True

    async def _states(
        self, conn: Connection, t: HistoryTable, devices: set[str]
    ) -> dict[str, State]:
        """The states of ``devices``: from memory, the rest read (no lock: see the CAS)."""
        states: dict[str, State] = {}
        missing = []
        cache = self._cache[t.kind]
        for device in devices:
            state = cache.get(device)
            if state is None:
                missing.append(device)
            else:
                states[device] = state
        if not missing:
            return states
        rows = await conn.fetch(_STATES_SQL[t.kind], sorted(missing))
        replaced = [r["device"] for r in rows if r["replacement_at"] is not None]
        replacements = await _replacements(conn, t, replaced) if replaced else {}
        for row in rows:
            states[row["device"]] = State(
                row["version"], row["ts"], row["register"], row["kwh"] or 0.0,
                row["register_quality"], row["register_level"], row["register_level_ts"],
                row["register_prev_ts"], row["register_prev_level"],
                row["register_prev_level_ts"], row["known"], row["dirty_from"],
                tuple(replacements.get(row["device"], ())),
            )  # fmt: skip
        return states

    def _book_in_order(self, plan: Plan, device: str, state: State, new: list[Point]) -> None:
        """New readings after everything stored: booked from the device's state alone. A
        pending latest reading is booked again with them (the next reading decides it)."""
        latest = state.latest
        last = latest.last
        redo = last is not None and last.pending
        if last is None:
            sequence, start, previous = new, Chain(), None
        elif redo:
            sequence, start, previous = [last.point, *new], latest.prev_chain, latest.prev_ts
        else:
            sequence, start, previous = new, last.chain, last.ts
        bookings = book(
            sequence, self.rules, start=start, previous_ts=previous,
            replacements=state.replacements,
        )  # fmt: skip
        if redo:
            assert last is not None
            if not last.same(bookings[0]):
                plan.changed.append((device, last.ts, bookings[0]))
        for point, booking in zip(new, bookings[1:] if redo else bookings, strict=True):
            plan.new[(device, point.ts)] = booked(booking)
        before: tuple[datetime | None, Chain] = (previous, start)
        if len(sequence) > 1:
            before = (sequence[-2].ts, bookings[-2].chain)
        plan.after[device] = state.moved(_latest(Stored.of(sequence[-1], bookings[-1]), *before))

    async def _book_from_history(
        self,
        conn: Connection,
        t: HistoryTable,
        plan: Plan,
        device: str,
        state: State,
        *,
        new: list[Point],
        earliest: datetime,
    ) -> None:
        """Book ``new`` (and again what they change) from the history around them.

        Starts at the reading before ``earliest`` (a late reading may decide whether its
        predecessor was a glitch or a reset), from the chain stored after the one before
        that, and goes on until the bookings agree with the stored ones again.
        """
        select = _row_sql(t)
        before = [
            _stored(r)
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
        latest: Latest | None = None
        inclusive = True
        while True:
            op = ">=" if inclusive else ">"
            rows = [
                _stored(r)
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
                self.rules,
                start=start,
                previous_ts=previous_ts,
                after=after,
                replacements=state.replacements,
            )
            for (point, stored), booking in zip(sequence, bookings, strict=True):
                latest = _latest(Stored.of(point, booking), *prior)
                if stored is None:
                    plan.new[(device, point.ts)] = booked(booking)
                elif not stored.same(booking):
                    plan.changed.append((device, point.ts, booking))
                elif point.ts > last_new and point.ts > earliest:
                    # Agrees with what is stored past every new reading: the rest is
                    # unchanged. If this is the latest reading, what precedes it may not be.
                    if stored_last is not None and point.ts == stored_last.ts:
                        plan.after[device] = state.moved(latest)
                    return
                prior = (point.ts, booking.chain)
            if not more:
                break
            start, previous_ts = bookings[-1].chain, sequence[-1][0].ts
            cursor = page[-1].ts
        if latest is not None:
            plan.after[device] = state.moved(latest)

    async def _apply(self, conn: Connection, t: HistoryTable, plan: Plan) -> None:
        """Stored rows booked again: the history, current state, their hours' rollups."""
        if not plan.changed:
            return
        devices = [d for d, _, _ in plan.changed]
        stamps = [ts for _, ts, _ in plan.changed]
        kwh = [b.kwh for _, _, b in plan.changed]
        quality = [b.quality.value if b.quality else None for _, _, b in plan.changed]
        levels = [b.chain.level for _, _, b in plan.changed]
        level_stamps = [b.chain.level_ts for _, _, b in plan.changed]
        for table in (t.readings, t.current):  # the row, and the current row if it is that
            await conn.execute(
                f"UPDATE {table} h SET {t.kwh} = u.k, register_quality = u.q, "
                "register_level = u.l, register_level_ts = u.lt "
                "FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::text[], "
                "$5::float8[], $6::timestamptz[]) AS u (i, t, k, q, l, lt) "
                f"WHERE h.{t.device} = u.i AND h.ts = u.t",
                devices, stamps, kwh, quality, levels, level_stamps,
            )  # fmt: skip
        # The current row's chain before it, when the changed row is its predecessor.
        await conn.execute(
            f"UPDATE {t.current} c SET register_prev_level = u.l, register_prev_level_ts = u.lt "
            "FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::timestamptz[]) "
            f"AS u (i, t, l, lt) WHERE c.{t.device} = u.i AND c.register_prev_ts = u.t",
            devices,
            stamps,
            levels,
            level_stamps,
        )
        hours = sorted({(d, _hour(ts)) for d, ts in zip(devices, stamps, strict=True)})
        await recompute_rollups(conn, t, hours)

    # --- the cache -----------------------------------------------------------------------

    def _remember(self, t: HistoryTable, plan: Plan) -> None:
        """The states as the statement just wrote them (one version on)."""
        cache, after = self._cache[t.kind], plan.after
        if len(cache) > CACHE_DEVICES:
            cache.clear()
        for device, old in plan.handled.items():
            state = after.get(device)
            cache[device] = state if state is not None else old.written()

    def _forget(self, batch: Batch) -> None:
        meters, vehicles = self._cache[METER.kind], self._cache[VEHICLE.kind]
        for r in batch.meters:
            meters.pop(r.meterId, None)
        for v in batch.vehicles:
            vehicles.pop(v.vehicleId, None)

    def _count(self, t: HistoryTable, plan: Plan) -> None:
        if self._metrics is None:
            return
        counts: dict[str, int] = {}
        for quality in plan.qualities():
            if quality is not None and quality != OK:
                counts[quality] = counts.get(quality, 0) + 1
        for quality, n in counts.items():
            self._metrics.register_bookings.labels(t.kind, quality).inc(n)

    # --- dirty devices -------------------------------------------------------------------

    async def rebook_dirty(self, conn: Connection, limit: int = 100) -> int:
        """Book again the devices marked dirty (oldest marks first); how many were."""
        done = 0
        for t in (METER, VEHICLE):
            devices = {
                r["device_id"]
                for r in await conn.fetch(
                    "SELECT device_id FROM register_devices WHERE kind = $1 AND dirty_from IS "
                    "NOT NULL ORDER BY dirty_from LIMIT $2",
                    t.kind,
                    limit,
                )
            }
            if not devices:
                continue
            for device in devices:
                self._cache[t.kind].pop(device, None)
            plan = Plan()
            for device, state in (await self._states(conn, t, devices)).items():
                if state.dirty_from is None:  # worked off meanwhile
                    continue
                plan.handled[device] = state
                await self._book_from_history(
                    conn, t, plan, device, state, new=[], earliest=state.dirty_from
                )
            try:
                async with conn.transaction():
                    arrays = _state_arrays(plan)[len(_MOVING[0]) :]
                    await conn.execute(WRITE_STAYING_SQL[t.kind], *arrays)
                    await self._apply(conn, t, plan)
            except asyncpg.PostgresError as exc:
                if not _moved(exc):
                    raise
                log.info("registers.state_moved", error=str(exc), hint="booked again next round")
                continue
            self._remember(t, plan)
            self._count(t, plan)
            done += len(plan.handled)
            if plan.changed:
                log.info("registers.rebooked", kind=t.kind, devices=len(plan.handled),
                         readings=len(plan.changed))  # fmt: skip
        return done


def _by_device(readings: Sequence[Reading]) -> tuple[dict[str, list[Reading]], set[str]]:
    """The readings by device, in batch order, and the devices with a register reading."""
    groups: dict[str, list[Reading]] = {}
    registers = set()
    for r in readings:
        device = r.device_id
        group = groups.get(device)
        if group is None:
            groups[device] = [r]
        else:
            group.append(r)
        if r.register is not None:
            registers.add(device)
    return groups, registers


def _latest(last: Stored, prev_ts: datetime | None, prev_chain: Chain) -> Latest:
    return Latest(last, prev_ts, prev_chain.level, prev_chain.level_ts)


def _hour(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


async def recompute_rollups(
    conn: Connection, t: HistoryTable, hours: Sequence[tuple[str, datetime]]
) -> None:
    """Compute the rollups of these (device, UTC hour)s again from the history."""
    if not hours:
        return
    columns = rollup_columns(t)
    await conn.execute(
        f"INSERT INTO {t.hourly} AS r ({t.device}, hour, {', '.join(columns)}) "
        f"SELECT h.{t.device}, u.hr, {', '.join(rollup_aggregates(t))} "
        f"FROM unnest($1::text[], $2::timestamptz[]) AS u (i, hr) JOIN {t.readings} h "
        f"ON h.{t.device} = u.i AND h.ts >= u.hr AND h.ts < u.hr + interval '1 hour' "
        f"GROUP BY 1, 2 ORDER BY 1, 2 "
        f"ON CONFLICT ({t.device}, hour) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in columns),
        [d for d, _ in hours],
        [h for _, h in hours],
    )


async def _replacements(
    conn: Connection, t: HistoryTable, devices: list[str]
) -> dict[str, list[Replacement]]:
    rows = await conn.fetch(
        "SELECT device_id, at, final_kwh, start_kwh FROM register_replacements "
        "WHERE kind = $1 AND device_id = ANY($2::text[]) ORDER BY device_id, at",
        t.kind,
        devices,
    )
    out: dict[str, list[Replacement]] = {}
    for r in rows:
        out.setdefault(r["device_id"], []).append(
            Replacement(r["at"], r["final_kwh"], r["start_kwh"])
        )
    return out


def _arrays(
    readings: Sequence[Reading],
    received: list[datetime],
    plan: Plan,
    values: Callable[[list[float]], list[list[Any]]],
) -> list[list[Any]]:
    """The main statement's arrays for one kind, each reading with its booking (see
    store.array_rows: the raw registers, and the bookings that are not increments);
    ``values`` gives the measured columns in the table's order, with the booked energy."""
    booked = plan.booked
    kwh: list[float] = []
    order: list[int] = []
    quality: list[str | None] = []
    level: list[float | None] = []
    level_ts: list[float | None] = []
    for i, r in enumerate(readings, 1):
        b = booked.get(id(r))
        if b is None:
            kwh.append(r.energy or 0.0)
            continue
        kwh.append(b[0])
        if b[1] != OK:
            order.append(i)
            quality.append(b[1])
            level.append(b[2])
            level_ts.append(b[3].timestamp() if b[3] is not None else None)
    return [
        [r.device_id for r in readings],
        [r.timestamp for r in readings],
        *values(kwh),
        epochs(received),
        [r.register for r in readings],
        order,
        quality,
        level,
        level_ts,
    ]


def _state_arrays(plan: Plan) -> list[list[Any]]:
    """The handled devices' arrays (see the statements), each group in device order:
    updates lock rows in one order. Times as epoch seconds (to_timestamp in the statement):
    a fraction of the cost of encoding timestamps. A moving device's chain before its
    newest reading is computed by the statement (store.history_sql), as it is here."""
    moving: list[str] = []
    staying: list[str] = []
    states, after = plan.handled, plan.after
    for device in sorted(states):
        if device in plan.moving:
            moving.append(device)
        elif states[device].version > 0:  # without a current row, nothing to write
            staying.append(device)
    st = [after.get(d) for d in staying]
    cleaned = sorted(d for d, s in states.items() if s.dirty_from is not None)
    return [
        moving,
        [states[d].version for d in moving],
        staying,
        [states[d].version for d in staying],
        [a is not None for a in st],
        _epochs([a.prev_ts if a else None for a in st]),
        [a.prev_level if a else None for a in st],
        _epochs([a.prev_level_ts if a else None for a in st]),
        sorted(d for d, s in states.items() if not s.known),
        cleaned,
        [states[d].dirty_from for d in cleaned],
    ]


def _epochs(times: list[datetime | None]) -> list[float | None]:
    return [t.timestamp() if t is not None else None for t in times]


class Rebooker:
    """Books again the devices marked dirty: woken by the writer after a batch that marked
    some, and every ``interval_s`` for marks made elsewhere (a replacement recorded through
    the API, a mark a crash left behind). A loop that never dies: the database may be away."""

    def __init__(
        self, pool: asyncpg.Pool, booker: RegisterBooker, *, interval_s: float = 1.0
    ) -> None:
        self._pool = pool
        self._booker = booker
        self._interval_s = interval_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                async with self._pool.acquire() as conn:
                    while await self._booker.rebook_dirty(conn):
                        pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the writer reports the database; try again later
                log.warning("registers.rebook_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
