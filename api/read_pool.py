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
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from asyncpg.pool import PoolConnectionProxy


class FairPool:
    """``acquire`` in arrival order; otherwise the asyncpg pool it wraps."""

    def __init__(self, pool: asyncpg.Pool, size: int) -> None:
        self._pool = pool
        self._turns = asyncio.Semaphore(size)

    @contextlib.asynccontextmanager
    async def acquire(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - the same call as asyncpg.Pool's
    ) -> AsyncIterator[PoolConnectionProxy]:
        """A connection when every earlier request has had one; ``timeout`` (seconds)
        bounds the whole wait, as asyncpg's own does."""
        async with asyncio.timeout(timeout):
            await self._turns.acquire()
            try:
                connection = await self._pool.acquire()
            except BaseException:
                self._turns.release()
                raise
        try:
            yield connection
        finally:
            try:
                await self._pool.release(connection)
            finally:
                self._turns.release()

    async def close(self) -> None:
        await self._pool.close()
