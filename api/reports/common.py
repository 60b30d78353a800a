"""What the report modules share: rounding, the efficiency bands of the settings."""

from __future__ import annotations

from datetime import datetime

from api.policy import EfficiencyBands
from collector.settings import Settings

#: How many vehicles each list of the fleet summary holds at most.
LIST_LIMIT = 100
#: "Every row" as a page size for the status queries.
ALL = 1_000_000


def efficiency_bands(settings: Settings) -> EfficiencyBands:
    return EfficiencyBands(
        low=settings.efficiency_low,
        high=settings.efficiency_max,
        idle_kw=settings.efficiency_idle_kw,
    )


def hours(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() / 3600


def rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)
