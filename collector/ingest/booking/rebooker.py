"""The background task that books again the register devices marked dirty."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import structlog

from collector.ingest.booking.booker import RegisterBooker

log = structlog.get_logger("collector.registers")


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
