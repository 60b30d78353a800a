"""The analytics' policy: the window of a request, the bucket limit, the efficiency verdict.

No I/O and no HTTP: a refused request raises :class:`PolicyError`, which the API
answers as 422 (``api.problems``) and the dashboard shows as a page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

DEFAULT_WINDOW = timedelta(hours=24)
MAX_WINDOW = timedelta(days=366)
MAX_POINTS = 2000
#: Windows lie within the times a reading can have (readings start in 2000); bounding
#: them keeps every computation on a window inside what Python and PostgreSQL represent.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)

Verdict = Literal["normal", "low_efficiency", "anomaly", "idle", "insufficient_data"]
#: Every verdict, worst first (the order the dashboard sorts by).
VERDICTS: tuple[Verdict, ...] = ("anomaly", "low_efficiency", "idle", "insufficient_data", "normal")


class PolicyError(ValueError):
    """Well-formed input the policy refuses (the API's 422); the message says which."""


def resolve_window(
    start: datetime | None, end: datetime | None, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """``[start, end)``: the last 24 h by default; refused if empty, reversed or over a year.

    (Malformed values are 400 before this; well-formed values the policy refuses are 422.)
    """
    for name, value in (("from", start), ("to", end)):
        if value is not None and not EARLIEST <= value <= LATEST:
            raise PolicyError(
                f"invalid window: '{name}' must lie between {EARLIEST.date()} and "
                f"{LATEST.date()}, as readings do"
            )
    end = end or (now or datetime.now(UTC))
    start = start or end - DEFAULT_WINDOW
    if start >= end:
        raise PolicyError("invalid window: 'from' must be before 'to'")
    if end - start > MAX_WINDOW:
        raise PolicyError(f"invalid window: at most {MAX_WINDOW.days} days")
    return start, end


def check_buckets(start: datetime, end: datetime, width: timedelta, label: str) -> None:
    """Refuse a window that holds more than MAX_POINTS buckets of ``width``."""
    if (end - start) / width > MAX_POINTS:
        raise PolicyError(
            f"invalid window: more than {MAX_POINTS} buckets of {label}; "
            "use a wider bucket or a shorter window"
        )


@dataclass(frozen=True, slots=True)
class EfficiencyBands:
    """The thresholds of the efficiency verdict (``EFFICIENCY_LOW``, ``EFFICIENCY_MAX``,
    ``EFFICIENCY_IDLE_KW``)."""

    low: float
    high: float
    #: Average power (kW) below which a bucket or window in which neither stream moved
    #: more energy is idle: a parked vehicle whose charger draws standby power only.
    idle_kw: float = 0.0

    def judge(
        self, ac_kwh: float, dc_kwh: float, ac_count: int, dc_count: int, hours: float
    ) -> tuple[float | None, Verdict]:
        """DC/AC over a bucket or window of ``hours`` and its verdict.

        ``insufficient_data`` when one stream has no readings to compare (or AC is 0);
        ``idle`` (no ratio) when AC and DC are both below ``idle_kw`` x ``hours``: a few
        Wh of standby say nothing about the charger, and a ratio of 0 would read as a dead
        one; ``anomaly`` above ``high`` (DC cannot exceed AC); ``low_efficiency`` below
        ``low`` (a likely hardware fault); ``normal`` otherwise.
        """
        ratio = dc_kwh / ac_kwh if ac_kwh > 0 else None
        if ratio is None or ac_count == 0 or dc_count == 0:
            return ratio, "insufficient_data"
        floor = self.idle_kw * hours
        if ac_kwh < floor and dc_kwh < floor:
            return None, "idle"
        if ratio > self.high:
            return ratio, "anomaly"
        if ratio < self.low:
            return ratio, "low_efficiency"
        return ratio, "normal"
