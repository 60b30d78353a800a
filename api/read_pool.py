"""The API's read pool, handed out first come, first served.

asyncpg's pool queues waiting acquirers, but a request arriving just as a connection is
released takes it before the waiter that was woken for it runs: under load some requests
wait behind many later ones (``bench/http.py``: p99 90 ms at 64 connections against 5 ms
at 16, with the median barely moved). A FIFO semaphore of the pool's size in front of it
hands each released connection to the longest waiter (asyncio's semaphore is fair since
Python 3.11.1: a release wakes the first waiter and nobody can overtake it).
"""

from __future__ import annotations

import asyncio

import asyncpg
from asyncpg.pool import PoolConnectionProxy


class FairPool:
    """``acquire`` in arrival order; otherwise the asyncpg pool it wraps."""

    def __init__(self, pool: asyncpg.Pool, size: int) -> None:
        self._pool = pool
        self._turns = asyncio.Semaphore(size)

    def acquire(self, timeout: float | None = None) -> _Lease:
        """A connection when every earlier request has had one; ``timeout`` (seconds)
        bounds the whole wait, as asyncpg's own does."""
        return _Lease(self, timeout)

    async def close(self) -> None:
        await self._pool.close()


class _Lease:
    """One ``async with pool.acquire()``: a class, not a generator (this is on every read:
    a generator-based context manager and an unbounded ``asyncio.timeout`` cost a few
    microseconds each)."""

    __slots__ = ("_connection", "_fair", "_timeout")

    def __init__(self, fair: FairPool, timeout: float | None) -> None:
        self._fair = fair
        self._timeout = timeout
        self._connection: PoolConnectionProxy | None = None

    async def __aenter__(self) -> PoolConnectionProxy:
        if self._timeout is None:
            return await self._take()
        async with asyncio.timeout(self._timeout):
            return await self._take()

    async def _take(self) -> PoolConnectionProxy:
        fair = self._fair
        await fair._turns.acquire()
        try:
            self._connection = await fair._pool.acquire()
        except BaseException:
            fair._turns.release()
            raise
        return self._connection

    async def __aexit__(self, *exc: object) -> None:
        fair, connection = self._fair, self._connection
        assert connection is not None  # __aexit__ runs only after __aenter__ succeeded
        try:
            await fair._pool.release(connection)
        finally:
            fair._turns.release()
