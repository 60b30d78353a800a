"""Booking register readings in the database: from a device's state, or its history.

A register reading's energy depends on its neighbours (``booking.registers``), so writing
one is more than an insert. For a batch with register readings:

1. each register device's state: from memory (``state.StateCache``: what this booker last
   wrote), else read, without a lock;
2. each device's new readings booked: from its state when they are newer than everything
   stored (the usual case: no history is read, and one reading after a settled one is
   booked without building objects); else from the history around them
   (``history.book_from_history``), until the bookings agree with what is stored again (a
   late reading splits one interval in two);
3. one statement (``sql.WRITE_REGISTERS_SQL``) inserts the rows with their bookings,
   upserts the current rows and writes each state **only if its version is still the one
   the bookings were made from** (compare-and-set). If another collector of a shared
   subscription, the rebooker or an interval reading moved a state meanwhile, the statement
   fails as a whole (SQLSTATE RS001, sql/006) and the batch is booked again from fresh
   states: one device's readings are never booked from an old state, and nothing waits on
   a lock;
4. only when stored rows' bookings changed (a late reading): in the same transaction they
   are updated, and the rollups of their hours computed again from the history.

A batch without register readings is the plain batch statement (``store.write_batch``).
Devices marked ``register_devices.dirty_from`` (a late interval reading among register
readings, a replacement recorded afterwards) are booked again from that time by
:meth:`RegisterBooker.rebook_dirty`, which ``rebooker.Rebooker`` runs. docs/registers.md has
the design and its cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any

import asyncpg
import structlog

from collector.db.connection import Connection
from collector.ingest.batch import Batch, WriteResult
from collector.ingest.booking.history import book_from_history
from collector.ingest.booking.registers import (
    Chain,
    Point,
    RegisterLimits,
    book,
    booked,
    increment,
)
from collector.ingest.booking.sql import (
    DIRTY_SQL,
    MOVING_ARRAYS,
    REBOOKED_SQL,
    STATES_SQL,
    WRITE_REGISTERS_SQL,
    WRITE_STAYING_SQL,
    is_state_moved,
    reading_arrays,
    recompute_rollups,
    replacements,
    state_arrays,
)
from collector.ingest.booking.state import (
    OK,
    PENDING_VALUES,
    Plan,
    State,
    StateCache,
    Stored,
    latest,
)
from collector.ingest.readings import Reading
from collector.ingest.store import rejected_arrays, write_batch
from collector.ingest.streams import STREAMS, Stream
from collector.metrics import Metrics

log = structlog.get_logger("collector.registers")

#: Times a batch is booked again from fresh states before the error goes to the writer.
ATTEMPTS = 5


class RegisterBooker:
    """Books register readings; the writer's and the import's one way to write a batch.

    Keeps each register device's state as it last wrote it, so an in-order batch reads
    nothing before it writes. A state moved elsewhere is noticed by its version.
    """

    def __init__(self, limits: RegisterLimits, metrics: Metrics | None = None) -> None:
        self.limits = limits
        self._metrics = metrics
        self._cache = StateCache(list(STREAMS))
        self._register_fields = {s.model: s.register_field for s in STREAMS.values()}

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
                if not is_state_moved(exc):
                    raise
                self._forget(batch)
                log.info("registers.state_moved", error=str(exc), hint="booking the batch again")
        return await self._write(conn, batch, timeout_s)

    async def _write(self, conn: Connection, batch: Batch, timeout_s: float) -> WriteResult:
        plans = {
            name: await self._plan(conn, t, batch.rows[name].readings)
            for name, t in STREAMS.items()
        }
        args: list[Any] = []
        for name, t in STREAMS.items():
            args += reading_arrays(t, batch.rows[name], plans[name])
        args += rejected_arrays(batch)
        for plan in plans.values():
            args += state_arrays(plan)
        # One statement is its own transaction; with rows booked again, or inside the
        # import's transaction (a savepoint: a moved state is booked again), one around all.
        if any(plan.changed for plan in plans.values()) or conn.is_in_transaction():
            async with conn.transaction():
                row = await conn.fetchrow(WRITE_REGISTERS_SQL, *args, timeout=timeout_s)
                for name, t in STREAMS.items():
                    await self._apply(conn, t, plans[name])
        else:  # one statement: its own transaction
            row = await conn.fetchrow(WRITE_REGISTERS_SQL, *args, timeout=timeout_s)
        assert row is not None
        for name, plan in plans.items():
            self._cache.remember(name, plan)
        if row["dirty"]:
            self._forget(batch)
        for name, t in STREAMS.items():
            self._count(t, plans[name])
        return WriteResult(
            {name: row[name] for name in STREAMS}, len(batch.rejected), dirty=row["dirty"]
        )

    async def _plan(self, conn: Connection, t: Stream, readings: Sequence[Reading]) -> Plan:
        plan = Plan()
        groups, devices = _by_device(t, readings)
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
                await book_from_history(
                    conn, t, self.limits, plan, device=device, state=state, new=new,
                    earliest=earliest,
                )  # fmt: skip
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
        value, ts, last_ts = getattr(r, self._register_fields[type(r)]), r.timestamp, state.ts
        if (
            value is None
            or (last_ts is not None and ts <= last_ts)
            or state.dirty_from is not None
            or state.replacements
            or state.quality in PENDING_VALUES
        ):
            return False
        done = increment(value, ts, state.level, state.level_ts, self.limits)
        if done is None:
            return False
        plan.booked[id(r)] = done
        plan.moving.add(device)
        plan.after[device] = State(
            state.version + 1, ts, value, done[0], done[1], value, ts, last_ts, state.level,
            state.level_ts, True,
        )  # fmt: skip
        return True

    async def _states(self, conn: Connection, t: Stream, devices: set[str]) -> dict[str, State]:
        """The states of ``devices``: from memory, the rest read (no lock: see the CAS)."""
        states: dict[str, State] = {}
        missing = []
        cache = self._cache
        for device in devices:
            state = cache.get(t.name, device)
            if state is None:
                missing.append(device)
            else:
                states[device] = state
        if not missing:
            return states
        rows = await conn.fetch(STATES_SQL[t.name], sorted(missing))
        replaced = [r["device"] for r in rows if r["replacement_at"] is not None]
        found = await replacements(conn, t, replaced) if replaced else {}
        for row in rows:
            states[row["device"]] = State(
                row["version"], row["ts"], row["register"], row["kwh"] or 0.0,
                row["register_quality"], row["register_level"], row["register_level_ts"],
                row["register_prev_ts"], row["register_prev_level"],
                row["register_prev_level_ts"], row["known"], row["dirty_from"],
                tuple(found.get(row["device"], ())),
            )  # fmt: skip
        return states

    def _book_in_order(self, plan: Plan, device: str, state: State, new: list[Point]) -> None:
        """New readings after everything stored: booked from the device's state alone. A
        pending latest reading is booked again with them (the next reading decides it)."""
        now = state.latest
        last = now.last
        redo = last is not None and last.pending
        if last is None:
            sequence, start, previous = new, Chain(), None
        elif redo:
            sequence, start, previous = [last.point, *new], now.prev_chain, now.prev_ts
        else:
            sequence, start, previous = new, last.chain, last.ts
        bookings = book(
            sequence, self.limits, start=start, previous_ts=previous,
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
        plan.after[device] = state.moved(latest(Stored.of(sequence[-1], bookings[-1]), *before))

    async def _apply(self, conn: Connection, t: Stream, plan: Plan) -> None:
        """Stored rows booked again: the history, current state, their hours' rollups."""
        if not plan.changed:
            return
        devices = [d for d, _, _ in plan.changed]
        stamps = [ts for _, ts, _ in plan.changed]
        kwh = [b.kwh for _, _, b in plan.changed]
        quality = [b.quality.value if b.quality else None for _, _, b in plan.changed]
        levels = [b.chain.level for _, _, b in plan.changed]
        level_stamps = [b.chain.level_ts for _, _, b in plan.changed]
        history, current, previous = REBOOKED_SQL[t.name]
        for statement in (history, current):  # the row, and the current row if it is that
            await conn.execute(statement, devices, stamps, kwh, quality, levels, level_stamps)
        await conn.execute(previous, devices, stamps, levels, level_stamps)
        hours = sorted({(d, _hour(ts)) for d, ts in zip(devices, stamps, strict=True)})
        await recompute_rollups(conn, t, hours)

    def _forget(self, batch: Batch) -> None:
        for name, rows in batch.rows.items():
            self._cache.forget_readings(name, rows.readings)

    def _count(self, t: Stream, plan: Plan) -> None:
        if self._metrics is None:
            return
        counts: dict[str, int] = {}
        for quality in plan.qualities():
            if quality is not None and quality != OK:
                counts[quality] = counts.get(quality, 0) + 1
        for quality, n in counts.items():
            self._metrics.register_bookings.labels(t.name, quality).inc(n)

    # --- dirty devices -------------------------------------------------------------------

    async def rebook_dirty(self, conn: Connection, limit: int = 100) -> int:
        """Book again the devices marked dirty (oldest marks first); how many were."""
        done = 0
        for t in STREAMS.values():
            devices = {r["device_id"] for r in await conn.fetch(DIRTY_SQL, t.name, limit)}
            if not devices:
                continue
            self._cache.forget(t.name, devices)
            plan = Plan()
            for device, state in (await self._states(conn, t, devices)).items():
                if state.dirty_from is None:  # worked off meanwhile
                    continue
                plan.handled[device] = state
                await book_from_history(
                    conn, t, self.limits, plan, device=device, state=state, new=[],
                    earliest=state.dirty_from,
                )  # fmt: skip
            try:
                async with conn.transaction():
                    arrays = state_arrays(plan)[MOVING_ARRAYS:]
                    await conn.execute(WRITE_STAYING_SQL[t.name], *arrays)
                    await self._apply(conn, t, plan)
            except asyncpg.PostgresError as exc:
                if not is_state_moved(exc):
                    raise
                log.info("registers.state_moved", error=str(exc), hint="booked again next round")
                continue
            self._cache.remember(t.name, plan)
            self._count(t, plan)
            done += len(plan.handled)
            if plan.changed:
                log.info("registers.rebooked", kind=t.name, devices=len(plan.handled),
                         readings=len(plan.changed))  # fmt: skip
        return done


def _by_device(t: Stream, readings: Sequence[Reading]) -> tuple[dict[str, list[Reading]], set[str]]:
    """The readings by device, in batch order, and the devices with a register reading
    (ids and registers read in C: no property call per reading)."""
    groups: dict[str, list[Reading]] = {}
    registers = set()
    ids = map(attrgetter(t.id_field), readings)
    values = map(attrgetter(t.register_field), readings)
    for r, device, register in zip(readings, ids, values, strict=True):
        group = groups.get(device)
        if group is None:
            groups[device] = [r]
        else:
            group.append(r)
        if register is not None:
            registers.add(device)
    return groups, registers


def _hour(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)
