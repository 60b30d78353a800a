"""The writer: takes batches from the buffer, commits them, then acknowledges them, in order.

It owns every database write of ingest. Each batch taken from the buffer is split by device
over ``WRITER_LANES`` lanes, each with a connection and a committer (``committer``: retries,
isolates refused rows, never drops an accepted reading). A device always goes to the same
lane, so one device's readings are written in the order they arrived and two lanes never
touch the same rows (no lock waits, no deadlocks, no register state moved under a
booking). One lane is one PostgreSQL backend: with two, the database uses a second core,
and one lane's batch is prepared while the other's is written (docs/ingest.md).

A batch is acknowledged (its chunks' ``on_commit``: PUBACKs, HTTP answers) only when every
lane's part of it has committed, and batches are acknowledged in the order they were
taken: MQTT wants PUBACKs in the order of the PUBLISHes.

Group commit: the writer takes what is waiting as soon as a lane is free and no lane has a
part waiting, up to ``BATCH_SIZE`` items; what arrives meanwhile is the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter, itemgetter

import asyncpg
import structlog

from collector.ingest.batch import Batch, WriteResult
from collector.ingest.booking.booker import RegisterBooker
from collector.ingest.booking.registers import DEFAULT_LIMITS
from collector.ingest.buffer import Chunk, IngestBuffer
from collector.ingest.committer import (
    ATTEMPTS_BEFORE_SPLIT,
    ROW_ERRORS,
    Committer,
    PartitionRace,
    WriterHealth,
    is_partition_race,
)
from collector.ingest.readings import Reason
from collector.ingest.streams import STREAMS
from collector.metrics import Metrics

__all__ = [
    "ATTEMPTS_BEFORE_SPLIT",
    "ROW_ERRORS",
    "PartitionRace",
    "Writer",
    "WriterHealth",
    "batch_of",
    "is_partition_race",
]

#: With a ``FLUSH_INTERVAL_MS`` wait, flush early when no new chunk arrived for this long:
#: the sources are waiting on us (the broker's in-flight window is full until we ack).
IDLE_FLUSH_S = 0.005


def batch_of(chunks: list[Chunk]) -> Batch:
    """Merge chunks into one batch, each row stamped with its chunk's receive time."""
    batch = Batch()
    rows = batch.rows
    for chunk in chunks:
        at = chunk.received_at
        for name, readings in chunk.readings.items():
            if readings:
                rows[name].extend(readings, at)
        if chunk.rejected:
            batch.rejected.extend(chunk.rejected)
            batch.rejected_received.extend([at] * len(chunk.rejected))
    return batch


def split(batch: Batch, lanes: int) -> list[Batch]:
    """``batch`` cut into one part per lane by device (dead letters go with lane 0).

    Per reading only a hash and a modulo in a list comprehension; the parts are gathered
    with ``itemgetter`` (in C).
    """
    if lanes == 1:
        return [batch]
    parts = [Batch() for _ in range(lanes)]
    parts[0].rejected, parts[0].rejected_received = batch.rejected, batch.rejected_received
    for name, rows in batch.rows.items():
        if not rows.readings:
            continue
        ids = map(_IDS[name], rows.readings)
        lane_of = [hash(device) % lanes for device in ids]
        for lane, part in enumerate(parts):
            picked = [i for i, n in enumerate(lane_of) if n == lane]
            if not picked:
                continue
            target = part.rows[name]
            if len(picked) == len(lane_of):  # the whole batch is this lane's
                target.readings, target.received = rows.readings, rows.received
                target.received_epochs = rows.received_epochs
                continue
            get = itemgetter(*picked)
            if len(picked) == 1:
                target.readings = [get(rows.readings)]
                target.received = [get(rows.received)]
                target.received_epochs = [get(rows.received_epochs)]
            else:
                target.readings = list(get(rows.readings))
                target.received = list(get(rows.received))
                target.received_epochs = list(get(rows.received_epochs))
    return parts


#: Per stream, a reading's device id (read in C).
_IDS = {name: attrgetter(s.id_field) for name, s in STREAMS.items()}


@dataclass(eq=False, slots=True)
class Taken:
    """One batch taken from the buffer: its chunks, and its lanes' parts until committed."""

    chunks: list[Chunk]
    batch: Batch
    pending: int
    result: WriteResult = field(default_factory=WriteResult)
    started: float = field(default_factory=time.perf_counter)


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
        give_up_s: float = 300.0,
        lanes: int = 1,
        booker: RegisterBooker | None = None,
        on_dirty: Callable[[], object] | None = None,
        log: structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        self._buffer = buffer
        self._metrics = metrics
        self._batch_size = batch_size
        # Group commit by default (flush_interval_s 0): a write starts as soon as the writer
        # is free and something waits, and what arrives while it is in flight is the next
        # batch, so batches grow with the load and a lone reading waits for nothing.
        self._linger_s = flush_interval_s
        self._idle_s = min(IDLE_FLUSH_S, flush_interval_s)
        self._lanes = lanes
        #: Called when a batch marked register devices to be booked again (the rebooker).
        self._on_dirty = on_dirty
        self._log = log or structlog.get_logger("collector.writer")
        self._debug = logging.getLogger("collector.writer").isEnabledFor(logging.DEBUG)
        self.health = WriterHealth()
        self.committer = Committer(
            pool=pool,
            metrics=metrics,
            booker=booker or RegisterBooker(DEFAULT_LIMITS, metrics),
            retry_max_s=retry_max_s,
            give_up_s=give_up_s,
            health=self.health,
            buffered=lambda: buffer.depth,
            log=self._log,
        )
        #: Batches taken and not yet acknowledged, in the order they were taken.
        self._taken: deque[Taken] = deque()
        #: Per lane, the parts waiting to be written (at most one waits while one is written).
        self._queues: list[deque[tuple[Taken, Batch]]] = [deque() for _ in range(lanes)]
        self._busy = [False] * lanes
        self._changed = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        """Flush until the buffer is closed and empty. Cancel to give up (shutdown deadline)."""
        workers = [asyncio.create_task(self._lane(i)) for i in range(self._lanes)]
        self._workers = workers
        try:
            while True:
                await self._wait(self._may_take)
                chunks = await self._buffer.take(self._batch_size, self._linger_s, self._idle_s)
                if not chunks:
                    break
                batch = batch_of(chunks)
                parts = [(i, p) for i, p in enumerate(split(batch, self._lanes)) if len(p)]
                taken = Taken(chunks, batch, pending=len(parts))
                self._taken.append(taken)
                for i, part in parts:
                    self._queues[i].append((taken, part))
                self._kick()
            await self._wait(lambda: not self._taken)
        finally:
            for worker in workers:
                worker.cancel()
            self._abandon()

    def _may_take(self) -> bool:
        """A lane is free, and none has a part waiting: the next batch can start now."""
        return not all(self._busy) and not any(self._queues)

    async def _wait(self, ready: Callable[[], bool]) -> None:
        """Until ``ready()``; raises when a lane died (it would never make anything ready)."""
        while not ready():
            for worker in self._workers:
                if worker.done():  # a lane ended on its own: a bug; let it be seen
                    worker.result()
                    raise RuntimeError("a writer lane stopped")
            self._changed.clear()
            await self._changed.wait()

    def _kick(self) -> None:
        self._changed.set()

    async def _lane(self, lane: int) -> None:
        queue = self._queues[lane]
        try:
            await self._write_parts(lane, queue)
        finally:
            self._kick()  # wake the taker (it sees a lane that stopped)

    async def _write_parts(self, lane: int, queue: deque[tuple[Taken, Batch]]) -> None:
        while True:
            await self._wait(lambda: bool(queue))
            taken, part = queue.popleft()
            self._busy[lane] = True
            self._kick()
            started = time.perf_counter()
            result = await self.committer.write(part)
            self._metrics.flush_seconds.observe(time.perf_counter() - started)
            self._metrics.flush_size.observe(len(part))
            self._busy[lane] = False
            taken.result += result
            taken.pending -= 1
            self._complete()
            self._kick()

    def _complete(self) -> None:
        """Acknowledge the batches whose every part committed, oldest first."""
        while self._taken and self._taken[0].pending == 0:
            taken = self._taken.popleft()
            self._done(taken)
            self._buffer.release(taken.chunks)

    def _done(self, taken: Taken) -> None:
        batch, result, chunks = taken.batch, taken.result, taken.chunks
        m = self._metrics
        for name, rows in batch.rows.items():
            if rows.readings:
                new = result.new[name]
                m.stored.labels(name).inc(new)
                m.duplicates.labels(name).inc(len(rows) - new - result.dead[name])
        for rejection in batch.rejected:
            m.rejected.labels(rejection.reason.value).inc()
        dead = sum(result.dead.values())
        if dead:
            m.rejected.labels(Reason.DATABASE_ERROR.value).inc(dead)
        mono = time.monotonic()
        if result.dirty and self._on_dirty is not None:
            self._on_dirty()
        for chunk in chunks:
            m.commit_lag.observe(mono - chunk.arrived)
            if chunk.on_commit is not None:
                try:
                    chunk.on_commit()
                except Exception:
                    self._log.exception("writer.commit_callback_failed")
        newest = max(
            (rows.readings[-1].timestamp for rows in batch.rows.values() if rows.readings),
            default=None,
        )
        if newest is not None:
            m.reading_age.set((datetime.now(UTC) - newest).total_seconds())
        self.health.last_commit_at = time.time()
        if self._debug:
            self._log.debug(
                "writer.flushed",
                items=len(batch),
                chunks=len(chunks),
                write_ms=round((time.perf_counter() - taken.started) * 1000, 1),
                buffered=self._buffer.depth,
            )

    def _abandon(self) -> None:
        """On exit without commit (shutdown deadline): tell HTTP callers, leave MQTT unacked.

        A batch of which some lane's part did commit is abandoned too: what was stored is
        stored once, and a retry (the broker's redelivery, the HTTP client's) is absorbed.
        """
        left = [c for taken in self._taken for c in taken.chunks]
        left += self._buffer.drain_abandoned()
        self._taken.clear()
        for queue in self._queues:
            queue.clear()
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
