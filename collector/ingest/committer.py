"""Committing one batch: retried until it commits, a refused row isolated, nothing lost.

A failed write is retried with backoff until it commits (the batch stays in hand, the buffer
fills, the sources stop taking messages), so an accepted reading is never dropped. A row the
database refuses as data (SQLSTATE classes 22 and 23) is isolated by splitting the batch
and goes to the dead-letter table instead of blocking everything behind it. A failure that
waiting cannot fix (a missing privilege or table, a wrong password: ``collector.db.errors``)
is still retried, but logged as ``writer.permanent_error`` with what to do, and shown so in
``/health``. The writer (``writer``) runs one committer per lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import asyncpg.exceptions._base as asyncpg_base
import structlog

from collector.backoff import Backoff
from collector.db.connection import Connection
from collector.db.errors import Diagnosis, diagnose
from collector.ingest.batch import Batch, WriteResult
from collector.ingest.booking.booker import RegisterBooker
from collector.ingest.readings import Reason, Rejection
from collector.ingest.store import write_batch
from collector.metrics import Metrics


class PartitionRace(Exception):
    """A row was routed to the default partition while its day's partition was attached."""


def is_partition_race(exc: BaseException) -> bool:
    """Not bad data: the partition manager attached the row's day partition meanwhile.

    PostgreSQL reports it as a check violation (class 23) of the partition constraint; the
    same batch succeeds when written again, so it is retried, never dead-lettered.
    """
    return isinstance(exc, asyncpg.CheckViolationError) and "partition constraint" in str(exc)


#: Refused because of the data in a row, not because of the database: isolate the row.
ROW_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg_base.DataError)
#: Anything else that fails a write: the database is away, restarting, overloaded, or the
#: connection is broken. The batch is kept and retried with backoff.
RETRYABLE_ERRORS = (
    PartitionRace,
    TimeoutError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg_base.InternalClientError,
)
#: A batch that fails this often in a row for a reason of its own is written in halves.
ATTEMPTS_BEFORE_SPLIT = 3
STATEMENT_TIMEOUT_S = 60.0


@dataclass(slots=True)
class WriterHealth:
    """What probes and /health read about the writer."""

    database_ok: bool = False
    last_commit_at: float | None = None  # time.time()
    last_error: str | None = None
    #: The last error is one that retrying alone cannot fix; ``hint`` says what to do.
    permanent: bool = False
    hint: str | None = None


class Committer:
    """Writes a batch until it commits; what the writer (and each of its lanes) runs."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        metrics: Metrics,
        booker: RegisterBooker,
        retry_max_s: float,
        give_up_s: float,
        health: WriterHealth,
        buffered: Callable[[], int],
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._booker = booker
        self._retry_max_s = retry_max_s
        self._give_up_s = give_up_s
        self.health = health
        #: Items held by the buffer now (for the retry log lines).
        self._buffered = buffered
        self._log = log

    async def write(self, batch: Batch) -> WriteResult:
        """Write ``batch``, retrying until it commits (see :meth:`_write_in_parts`)."""
        outcome = await self._attempts(batch, own_limit=ATTEMPTS_BEFORE_SPLIT)
        if isinstance(outcome, WriteResult):
            return outcome
        if len(batch) == 1:
            return await self._write_alone(batch, outcome, others_went_through=False)
        return await self._write_in_parts(batch, outcome)

    async def _write_in_parts(self, batch: Batch, found: Diagnosis) -> WriteResult:
        """A batch that keeps failing for a reason of its own: write it in ever smaller parts.

        So one batch the server cannot take (too many partitions for its lock table, a row
        that trips an error) never blocks what comes behind it. The readings that still fail
        alone are set aside until the rest is written, then handled by :meth:`_write_alone`.
        """
        self._metrics.db_errors.labels("batch_split").inc()
        self._log.warning(
            "writer.splitting",
            error=found.error,
            items=len(batch),
            attempts=ATTEMPTS_BEFORE_SPLIT,
            hint="the batch keeps failing: writing it in parts so the rest goes through",
        )
        total = WriteResult()
        went_through = False
        pending: deque[Batch] = deque(batch.halves())
        set_aside: list[tuple[Batch, Diagnosis]] = []
        while pending:
            part = pending.popleft()
            outcome = await self._attempts(part, own_limit=ATTEMPTS_BEFORE_SPLIT)
            if isinstance(outcome, WriteResult):
                total += outcome
                went_through = True
            elif len(part) > 1:
                pending.extendleft(reversed(part.halves()))
            else:
                set_aside.append((part, outcome))
        if set_aside:
            self._log.warning(
                "writer.set_aside",
                readings=len(set_aside),
                others_went_through=went_through,
                hint="readings that fail alone: dead-lettered if they fail once more while "
                f"others go through, or after {self._give_up_s:g} s of the same failure",
            )
        for part, failed in set_aside:
            total += await self._write_alone(part, failed, others_went_through=went_through)
        return total

    async def _write_alone(
        self, part: Batch, failed: Diagnosis, *, others_went_through: bool
    ) -> WriteResult:
        """One item that fails on its own.

        A reading that fails with a statement error goes to the dead-letter table: after one
        more try when other readings of its batch went through (so the server takes rows,
        just not this one), else once it has failed so for ``WRITE_GIVE_UP_S`` (a server-wide
        trouble that lasts less is ridden out, and nothing waits behind one reading for
        longer). A timeout, or a dead letter that fails, is retried until it commits.
        """
        if failed.cause != "statement" or not part.readings:
            outcome = await self._attempts(part, own_limit=None)
        elif others_went_through:
            outcome = await self._attempts(part, own_limit=ATTEMPTS_BEFORE_SPLIT)
        else:
            outcome = await self._attempts(part, own_limit=None, give_up_s=self._give_up_s)
        if isinstance(outcome, WriteResult):
            return outcome
        dead = self._dead_letter(part, outcome.error, "writer.row_failed")
        written = await self._attempts(dead, own_limit=None)
        assert isinstance(written, WriteResult)
        return _dead_instead(part, written)

    async def _attempts(
        self, batch: Batch, *, own_limit: int | None, give_up_s: float | None = None
    ) -> WriteResult | Diagnosis:
        """Try to write ``batch`` until it commits; retry with backoff while the database
        is away or misconfigured. Give up (returning why) after ``own_limit`` failures that
        may be the batch's own doing (statement errors, timeouts), or once statement errors
        have gone on for ``give_up_s``; with neither, never give up."""
        backoff = Backoff(0.1, self._retry_max_s)
        failures = 0
        own = 0
        failing_since: float | None = None  # statement errors, uninterrupted
        while True:
            try:
                async with self._pool.acquire() as conn:
                    try:
                        result = await self._write_isolating(conn, batch)
                    except BaseException:
                        # After a failed write the connection may be in a state asyncpg
                        # cannot recover from (MagicStack/asyncpg#1069): never reuse it. It
                        # may also be closed already; that must not hide the real error.
                        with contextlib.suppress(Exception):
                            conn.terminate()
                        raise
            except RETRYABLE_ERRORS as exc:
                failures += 1
                found = diagnose(exc)
                self._note_failure(found)
                own += found.cause in ("statement", "timeout")
                if found.cause == "statement":
                    failing_since = failing_since or time.monotonic()
                else:
                    failing_since = None
                stuck_s = 0.0 if failing_since is None else time.monotonic() - failing_since
                if own_limit is not None and own >= own_limit:
                    return found
                if give_up_s is not None and failing_since is not None and stuck_s >= give_up_s:
                    return found
                delay = backoff.next()
                # One line per failure is enough to follow an outage; the batch is kept.
                event = {
                    "error": found.error,
                    "items": len(batch),
                    "attempt": failures,
                    "retry_in_s": round(delay, 2),
                    "buffered": self._buffered(),
                }
                if found.permanent:
                    self._log.error(
                        "writer.permanent_error", sqlstate=found.sqlstate, hint=found.hint, **event
                    )
                else:
                    self._log.warning("writer.retrying", cause=found.cause, **event)
                await asyncio.sleep(delay)
                continue
            if failures:
                self._log.info("writer.recovered", attempts=failures + 1, items=len(batch))
            self.health.database_ok = True
            self.health.last_error, self.health.permanent, self.health.hint = None, False, None
            return result

    def _note_failure(self, found: Diagnosis) -> None:
        health = self.health
        health.database_ok = False
        health.last_error, health.permanent, health.hint = found.error, found.permanent, found.hint
        self._metrics.db_errors.labels("retried").inc()

    def _dead_letter(self, batch: Batch, error: str, event: str) -> Batch:
        """The dead letter that replaces a single reading the database will not take."""
        rows = next(rows for rows in batch.rows.values() if rows.readings)
        reading, received = rows.readings[0], rows.received[0]
        self._log.error(
            event, device=reading.device_id, ts=reading.timestamp.isoformat(), error=error
        )
        dead = Rejection(
            source="database",
            payload=reading.to_json(),
            reason=Reason.DATABASE_ERROR,
            detail=error,
        )
        return Batch.of(received_at=received, rejected=[dead])

    async def _write_isolating(self, conn: Connection, batch: Batch) -> WriteResult:
        """Write ``batch``; if a row is refused as data, split until it is found."""
        try:
            return await self._booker.write(conn, batch, STATEMENT_TIMEOUT_S)
        except ROW_ERRORS as exc:
            if is_partition_race(exc):
                raise PartitionRace(str(exc)) from exc
            self._metrics.db_errors.labels("row_refused").inc()
            self._log.warning(
                "writer.batch_refused",
                error=f"{type(exc).__name__}: {exc}",
                items=len(batch),
                hint="splitting the batch to find the row",
            )
            if len(batch) > 1:
                first, second = batch.halves()
                a = await self._write_isolating(conn, first)
                return a + await self._write_isolating(conn, second)
            if batch.rejected:
                raise  # a dead letter itself is refused: nothing to fall back to, retry
            dead = self._dead_letter(batch, f"{type(exc).__name__}: {exc}", "writer.row_refused")
            result = await write_batch(conn, dead, STATEMENT_TIMEOUT_S)
            return _dead_instead(batch, result)


def _dead_instead(batch: Batch, written: WriteResult) -> WriteResult:
    """The result of writing ``batch``'s one reading as a dead letter instead."""
    return WriteResult(
        rejected=written.rejected, dead={name: len(rows) for name, rows in batch.rows.items()}
    )
