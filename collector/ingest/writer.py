"""The single writer: takes batches from the buffer, commits them, then acknowledges them.

It owns every database write of ingest. A failed write is retried with backoff until it
commits (the batch stays in hand, the buffer fills, the sources stop taking messages), so an
accepted reading is never dropped. A row the database refuses as data (SQLSTATE classes 22
and 23) is isolated by splitting the batch and goes to the dead-letter table instead of
blocking everything behind it. A failure that waiting cannot fix (a missing privilege or
table, a wrong password: ``collector.db.errors``) is still retried, but logged as
``writer.permanent_error`` with what to do, and shown so in ``/health``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import asyncpg.exceptions._base as asyncpg_base
import structlog

from collector.backoff import Backoff
from collector.db.connection import Connection
from collector.db.errors import diagnose
from collector.ingest.buffer import Chunk, IngestBuffer
from collector.ingest.readings import Reading, Reason, Rejection
from collector.ingest.store import Batch, WriteResult, write_batch
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
#: Flush early when no new chunk arrived for this long: the sources are waiting on us
#: (typically the broker's in-flight window is full until we acknowledge).
IDLE_FLUSH_S = 0.005
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


def batch_of(chunks: list[Chunk]) -> Batch:
    """Merge chunks into one batch, each row stamped with its chunk's receive time."""
    batch = Batch()
    for chunk in chunks:
        at = chunk.received_at
        if chunk.meters:
            batch.meters.extend(chunk.meters)
            batch.meters_received.extend([at] * len(chunk.meters))
        if chunk.vehicles:
            batch.vehicles.extend(chunk.vehicles)
            batch.vehicles_received.extend([at] * len(chunk.vehicles))
        if chunk.rejected:
            batch.rejected.extend(chunk.rejected)
            batch.rejected_received.extend([at] * len(chunk.rejected))
    return batch


class Writer:
    """Commits what the sources put in the buffer, in order, and runs their callbacks."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        buffer: IngestBuffer,
        metrics: Metrics,
        batch_size: int,
        flush_interval_s: float,
        retry_max_s: float,
        log: structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        self._pool = pool
        self._buffer = buffer
        self._metrics = metrics
        self._batch_size = batch_size
        self._linger_s = flush_interval_s
        self._idle_s = min(IDLE_FLUSH_S, flush_interval_s)
        self._retry_max_s = retry_max_s
        self._log = log or structlog.get_logger("collector.writer")
        self._in_hand: list[Chunk] = []
        self._debug = logging.getLogger("collector.writer").isEnabledFor(logging.DEBUG)
        self.health = WriterHealth()

    async def run(self) -> None:
        """Flush until the buffer is closed and empty. Cancel to give up (shutdown deadline)."""
        try:
            while True:
                chunks = await self._buffer.take(self._batch_size, self._linger_s, self._idle_s)
                if not chunks:
                    return
                self._in_hand = chunks
                await self._flush(chunks)
                self._in_hand = []
                self._buffer.release(chunks)
        finally:
            self._abandon()

    async def _flush(self, chunks: list[Chunk]) -> None:
        batch = batch_of(chunks)
        started = time.perf_counter()
        result = await self._write_until_committed(batch)
        now = time.perf_counter()
        m = self._metrics
        m.flush_seconds.observe(now - started)
        m.flush_size.observe(len(batch))
        if batch.meters:
            m.stored.labels("meter").inc(result.meters_new)
            m.duplicates.labels("meter").inc(len(batch.meters) - result.meters_new)
        if batch.vehicles:
            m.stored.labels("vehicle").inc(result.vehicles_new)
            m.duplicates.labels("vehicle").inc(len(batch.vehicles) - result.vehicles_new)
        for rejection in batch.rejected:
            m.rejected.labels(rejection.reason.value).inc()
        mono = time.monotonic()
        for chunk in chunks:
            m.commit_lag.observe(mono - chunk.arrived)
            if chunk.on_commit is not None:
                try:
                    chunk.on_commit()
                except Exception:
                    self._log.exception("writer.commit_callback_failed")
        last: list[Reading] = [*batch.meters[-1:], *batch.vehicles[-1:]]
        newest = max((r.timestamp for r in last), default=None)
        if newest is not None:
            m.reading_age.set((datetime.now(UTC) - newest).total_seconds())
        self.health.last_commit_at = time.time()
        if self._debug:
            self._log.debug(
                "writer.flushed",
                items=len(batch),
                chunks=len(chunks),
                write_ms=round((now - started) * 1000, 1),
                oldest_wait_ms=round((started - chunks[0].arrived) * 1000, 1),
                buffered=self._buffer.depth,
            )

    async def _write_until_committed(self, batch: Batch) -> WriteResult:
        backoff = Backoff(0.1, self._retry_max_s)
        failures = 0
        while True:
            try:
                async with self._pool.acquire() as conn:
                    try:
                        result = await self._write_isolating(conn, batch)
                    except BaseException:
                        # After a failed write the connection may be in a state asyncpg
                        # cannot recover from (MagicStack/asyncpg#1069): never reuse it.
                        conn.terminate()
                        raise
            except RETRYABLE_ERRORS as exc:
                failures += 1
                delay = backoff.next()
                found = diagnose(exc)
                health = self.health
                health.database_ok = False
                health.last_error, health.permanent, health.hint = (
                    found.error,
                    found.permanent,
                    found.hint,
                )
                self._metrics.db_errors.labels("retried").inc()
                # One line per failure is enough to follow an outage; the batch is kept.
                event = {
                    "error": found.error,
                    "items": len(batch),
                    "attempt": failures,
                    "retry_in_s": round(delay, 2),
                    "buffered": self._buffer.depth,
                }
                if found.permanent:
                    self._log.error(
                        "writer.permanent_error",
                        sqlstate=found.sqlstate,
                        hint=found.hint,
                        **event,
                    )
                else:
                    self._log.warning("writer.retrying", **event)
                await asyncio.sleep(delay)
                continue
            if failures:
                self._log.info("writer.recovered", attempts=failures + 1, items=len(batch))
            self.health.database_ok = True
            self.health.last_error, self.health.permanent, self.health.hint = None, False, None
            return result

    async def _write_isolating(self, conn: Connection, batch: Batch) -> WriteResult:
        """Write ``batch``; if a row is refused as data, split until it is found."""
        try:
            return await write_batch(conn, batch, STATEMENT_TIMEOUT_S)
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
                b = await self._write_isolating(conn, second)
                return WriteResult(
                    a.meters_new + b.meters_new,
                    a.vehicles_new + b.vehicles_new,
                    a.rejected + b.rejected,
                )
            if batch.rejected:
                raise  # a dead letter itself is refused: nothing to fall back to, retry
            reading = (batch.meters or batch.vehicles)[0]
            received = (batch.meters_received or batch.vehicles_received)[0]
            self._log.error(
                "writer.row_refused",
                device=reading.device_id,
                ts=reading.timestamp.isoformat(),
                error=str(exc),
            )
            dead = Rejection(
                source="database",
                payload=reading.model_dump_json().encode(),
                reason=Reason.DATABASE_ERROR,
                detail=f"{type(exc).__name__}: {exc}",
            )
            result = await write_batch(
                conn, Batch(rejected=[dead], rejected_received=[received]), STATEMENT_TIMEOUT_S
            )
            return WriteResult(0, 0, result.rejected)

    def _abandon(self) -> None:
        """On exit without commit (shutdown deadline): tell HTTP callers, leave MQTT unacked."""
        left = self._in_hand + self._buffer.drain_abandoned()
        self._in_hand = []
        if not left:
            return
        self._log.warning(
            "writer.abandoned",
            items=sum(c.size for c in left),
            hint="not acknowledged; the broker redelivers them to the next session",
        )
        for chunk in left:
            if chunk.on_abandon is not None:
                chunk.on_abandon()
        self._buffer.release(left)
