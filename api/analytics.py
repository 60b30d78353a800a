"""Pure analytics rules: the window of a request and the efficiency verdict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from api.problems import ProblemError

DEFAULT_WINDOW = timedelta(hours=24)
MAX_WINDOW = timedelta(days=366)
MAX_POINTS = 2000

Verdict = Literal["normal", "low_efficiency", "anomaly", "insufficient_data"]


def resolve_window(
    start: datetime | None, end: datetime | None, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """``[start, end)``: the last 24 h by default; 422 if empty, reversed or over a year.

    (Malformed values are 400; well-formed values the rules refuse are 422.)
    """
    end = end or (now or datetime.now(UTC))
    start = start or end - DEFAULT_WINDOW
    if start >= end:
        raise ProblemError(422, "invalid window: 'from' must be before 'to'")
    if end - start > MAX_WINDOW:
        raise ProblemError(422, f"invalid window: at most {MAX_WINDOW.days} days")
    return start, end


def efficiency(
    ac_kwh: float, dc_kwh: float, ac_count: int, dc_count: int, *, low: float, high: float
) -> tuple[float | None, Verdict]:
    """DC/AC and its verdict.

    ``insufficient_data`` when one stream has no readings to compare (or AC is 0);
    ``anomaly`` above ``high`` (DC cannot exceed AC); ``low_efficiency`` below ``low`` (a
    likely hardware fault); ``normal`` otherwise.
    """
    ratio = dc_kwh / ac_kwh if ac_kwh > 0 else None
    if ratio is None or ac_count == 0 or dc_count == 0:
        return ratio, "insufficient_data"
    if ratio > high:
        return ratio, "anomaly"
    if ratio < low:
        return ratio, "low_efficiency"
    return ratio, "normal"
