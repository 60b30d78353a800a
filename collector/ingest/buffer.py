"""The bounded buffer between the sink (every source's way in) and the single writer.

The sink puts *chunks*: the readings (by stream) and rejections that arrived together, and a
callback to run once they are committed (send the PUBACKs, answer the HTTP request).
Capacity counts items from the moment they are put until the writer has committed them, so
memory stays bounded while the database is slow or down: a source waiting in
:meth:`IngestBuffer.put` stops taking messages, and the broker holds the rest. No chunk is
larger than the capacity: the sink refuses bigger ones, and sources cut what they submit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from collector.ingest.readings import Reading, Rejection


class BufferClosed(Exception):
    """The collector is shutting down and takes no more input."""


@dataclass(eq=False, slots=True)
class Chunk:
    """Items that arrived together and what to do once they are committed."""

    #: The readings, by stream name (streams without readings may be absent).
    readings: dict[str, list[Reading]]
    rejected: list[Rejection]
    received_at: datetime
    #: Runs after the commit, in put order (MQTT: PUBACKs; HTTP: answer the request).
    on_commit: Callable[[], object] | None = None
    #: Runs instead when the collector stops before it could commit (HTTP: 503).
    on_abandon: Callable[[], object] | None = None
    arrived: float = field(default_factory=time.monotonic)
    #: Items in the chunk (readings and rejections), what the buffer's capacity counts.
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = sum(map(len, self.readings.values())) + len(self.rejected)


class IngestBuffer:
    """FIFO of chunks with a capacity in items, for any number of sources and one writer."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._chunks: deque[Chunk] = deque()
        self._queued = 0  # items waiting for the writer
        self._held = 0  # items waiting or being written: what the capacity bounds
        self._last_put = time.monotonic()
        self._closed = False
        self._writer_wakeup: asyncio.Future[None] | None = None
        self._space_waiters: deque[tuple[asyncio.Future[None], int]] = deque()

    @property
    def depth(self) -> int:
        """Items accepted and not yet committed."""
        return self._held

    @property
    def closed(self) -> bool:
        return self._closed

    def try_put(self, chunk: Chunk) -> bool:
        """Queue ``chunk`` if there is room now and nobody is waiting for room; else False."""
        if self._closed:
            raise BufferClosed("the collector is shutting down")
        self._check_size(chunk)
        if self._space_waiters or not self._fits(chunk.size):
            return False
        self._held += chunk.size
        self._queue(chunk)
        return True

    async def put(self, chunk: Chunk) -> None:
        """Queue ``chunk``, waiting (in FIFO order) while the buffer is full.

        Raises ``BufferClosed`` once the collector is shutting down, ``ValueError`` for a
        chunk larger than the whole capacity (sources cut what they put to fit).
        """
        if self._closed:
            raise BufferClosed("the collector is shutting down")
        self._check_size(chunk)
        size = chunk.size
        if self._space_waiters or not self._fits(size):
            waiter = asyncio.get_running_loop().create_future()
            self._space_waiters.append((waiter, size))
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and not self._closed:
                    self._held -= size  # admitted, then cancelled: give the room back
                    self._admit()
                raise
            if self._closed:
                raise BufferClosed("the collector is shutting down")
        else:
            self._held += size
        self._queue(chunk)

    def _queue(self, chunk: Chunk) -> None:
        self._chunks.append(chunk)
        self._queued += chunk.size
        self._last_put = time.monotonic()
        self._wake_writer()

    def _check_size(self, chunk: Chunk) -> None:
        if chunk.size > self.capacity:
            raise ValueError(
                f"a chunk of {chunk.size} items cannot fit a buffer of {self.capacity}; "
                "the source must cut it"
            )

    async def take(self, max_items: int, linger_s: float, idle_s: float) -> list[Chunk]:
        """Wait for chunks and return them, up to ``max_items`` items (at least one chunk).

        Returns once ``max_items`` are queued, the oldest chunk has waited ``linger_s``, or
        nothing new arrived for ``idle_s`` (the sources are blocked, e.g. the broker's
        in-flight window is full and waits for our acks); at once with ``linger_s`` 0 (group
        commit). Returns ``[]`` when the buffer is closed and empty.
        """
        while not self._chunks:
            if self._closed:
                return []
            await self._sleep(None)
        deadline = self._chunks[0].arrived + linger_s
        while self._queued < max_items and not self._closed:
            now = time.monotonic()
            wait = min(deadline, self._last_put + idle_s) - now
            if wait <= 0:
                break
            await self._sleep(wait)
        taken: list[Chunk] = []
        count = 0
        while self._chunks and (not taken or count + self._chunks[0].size <= max_items):
            chunk = self._chunks.popleft()
            taken.append(chunk)
            count += chunk.size
        self._queued -= count
        return taken

    def release(self, chunks: list[Chunk]) -> None:
        """Free the capacity of committed (or abandoned) chunks and admit waiting sources."""
        self._held -= sum(c.size for c in chunks)
        self._admit()

    def close(self) -> None:
        """Refuse new chunks; the writer drains what is queued, then ``take`` returns ``[]``."""
        self._closed = True
        self._wake_writer()
        self._admit()

    def _fits(self, size: int) -> bool:
        return self._held + size <= self.capacity

    def _admit(self) -> None:
        """Let waiting sources in, oldest first, reserving their room as they are admitted."""
        while self._space_waiters:
            waiter, size = self._space_waiters[0]
            if waiter.done():  # cancelled while waiting
                self._space_waiters.popleft()
                continue
            if not self._closed:
                if not self._fits(size):
                    return
                self._held += size
            self._space_waiters.popleft()
            waiter.set_result(None)

    def drain_abandoned(self) -> list[Chunk]:
        """Remove and return every queued chunk (used when shutdown gives up on the database)."""
        chunks = list(self._chunks)
        self._chunks.clear()
        self._queued = 0
        return chunks

    def _wake_writer(self) -> None:
        if self._writer_wakeup is not None and not self._writer_wakeup.done():
            self._writer_wakeup.set_result(None)

    async def _sleep(self, seconds: float | None) -> None:
        """Sleep until something is put (or closed), or ``seconds`` pass."""
        loop = asyncio.get_running_loop()
        fut = self._writer_wakeup = loop.create_future()
        timer = None
        if seconds is not None:
            timer = loop.call_later(seconds, _resolve, fut)
        try:
            await fut
        finally:
            self._writer_wakeup = None
            if timer is not None:
                timer.cancel()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
