"""The last 24 hours of the fleet, computed once for every viewer.

The fleet summary and the dashboard's fleet page are the same answer for everyone who asks
within a few seconds, and computing it reads every device's rollups (docs/analytics.md).
So one computation serves all of them: :class:`FleetViews` keeps the latest
:class:`FleetView` for at most ``FLEET_MAX_AGE_S``; concurrent requests wait for the one
computation in flight instead of starting their own (single flight), and a view past half
its age is refreshed in the background while it is still served, so a steady stream of
viewers never waits for a computation.

A view's figures are exactly a direct computation of the window ``[asOf - 24 h, asOf)``:
only the window is older than the request, by at most ``FLEET_MAX_AGE_S``, and the answer
says so (``asOf``). ``FLEET_MAX_AGE_S=0`` computes every request afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from api import fleet_table
from api.models import VehicleStatus
from api.policy import DEFAULT_WINDOW
from api.read_pool import FairPool
from api.reports import analytics as analytics_report
from api.reports import status as status_report
from collector.settings import Settings

log = structlog.get_logger("api.fleet")
#: How many filtered and sorted tables (filter, search, sort, order) a view keeps.
TABLES_KEPT = 32


@dataclass(slots=True)
class FleetView:
    """The fleet as of ``as_of``: the summary, the verdicts and the dashboard's rows."""

    as_of: datetime
    report: analytics_report.FleetReport
    statuses: list[VehicleStatus]
    silent_meters: int
    rows: list[fleet_table.VehicleRow]
    counts: dict[str, int]
    computed_in_s: float
    _tables: OrderedDict[tuple[str, str, str, bool], list[fleet_table.VehicleRow]] = field(
        default_factory=OrderedDict
    )

    def table(
        self, *, show: str, search: str, sort: str, descending: bool, page: int
    ) -> fleet_table.TablePage:
        """One page of the fleet table; the filtered, sorted list is kept for the next
        viewer of the same table (sorting 50,000 rows per request would be the cost)."""
        key = (show, search.strip().lower(), sort, descending)
        ordered = self._tables.get(key)
        if ordered is None:
            ordered = fleet_table.ordered(
                self.rows, show=show, search=search, sort=sort, descending=descending
            )
            self._tables[key] = ordered
            while len(self._tables) > TABLES_KEPT:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(key)
        return fleet_table.paginate(ordered, page=page)


async def compute(pool: FairPool, settings: Settings, as_of: datetime) -> FleetView:
    """The fleet over ``[as_of - 24 h, as_of)``, read in one snapshot of the database."""
    t0 = time.perf_counter()
    silent_minutes = settings.dashboard_silent_minutes
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        report = await analytics_report.fleet(
            conn, settings, as_of - DEFAULT_WINDOW, as_of, as_of=as_of
        )
        statuses = await status_report.all_vehicle_statuses(conn)
        silent_meters = await status_report.silent_meter_count(conn, silent_minutes)
    rows = fleet_table.join(statuses, report.vehicles, silent_after_s=silent_minutes * 60)
    return FleetView(
        as_of=as_of,
        report=report,
        statuses=statuses,
        silent_meters=silent_meters,
        rows=rows,
        counts=fleet_table.counts(rows),
        computed_in_s=time.perf_counter() - t0,
    )


class FleetViews:
    """The latest fleet view, shared by every request (see the module's docstring)."""

    def __init__(
        self,
        pool: FairPool,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.max_age = timedelta(seconds=settings.fleet_max_age_s)
        self._clock = clock
        self._view: FleetView | None = None
        self._flight: asyncio.Task[FleetView] | None = None
        #: Computations started (for tests and the benchmark).
        self.computations = 0

    async def get(self) -> FleetView:
        """A view at most ``FLEET_MAX_AGE_S`` old (a fresh one when that is 0)."""
        now = self._clock()
        view = self._view
        if view is not None and self.max_age and now - view.as_of < self.max_age:
            if now - view.as_of >= self.max_age / 2 and self._flight is None:
                self._start(now).add_done_callback(_log_failure)
            return view
        flight = self._flight if self._flight is not None and self.max_age else self._start(now)
        # shield: a client that goes away does not cancel the others' computation.
        return await asyncio.shield(flight)

    def _start(self, now: datetime) -> asyncio.Task[FleetView]:
        self.computations += 1
        task = asyncio.create_task(self._compute(now), name="fleet-view")
        self._flight = task
        return task

    async def _compute(self, now: datetime) -> FleetView:
        try:
            view = await compute(self.pool, self.settings, now)
        finally:
            self._flight = None
        if self._view is None or view.as_of >= self._view.as_of:
            self._view = view
        log.debug("fleet.computed", as_of=view.as_of.isoformat(), seconds=view.computed_in_s)
        return view

    async def close(self) -> None:
        if self._flight is not None:
            self._flight.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._flight


def _log_failure(task: asyncio.Task[FleetView]) -> None:
    """A background refresh that failed: the current view is served until it is too old,
    and the next request past that computes (and reports the error) itself."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("fleet.refresh_failed", error=repr(exc))
