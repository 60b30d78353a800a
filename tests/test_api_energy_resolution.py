"""Energy leaves the API at its documented resolution (issue 26: float noise was shown)."""

from __future__ import annotations

from datetime import UTC, datetime

from api.context import reply
from api.models import MeterReadingOut, RegisterValue


def test_energy_is_given_to_a_millionth_of_a_kwh_and_nothing_else_is_cut():
    noisy = 12345.67007 - 12345.67  # 6.999999999912632e-05
    reading = MeterReadingOut(
        timestamp=datetime(2026, 12, 7, tzinfo=UTC), kwhConsumedAc=noisy, voltage=230.123456789
    )
    body = reply(reading).body
    assert b'"kwhConsumedAc":0.00007' in body and b'"voltage":230.123456789' in body
    register = RegisterValue(timestamp=datetime(2026, 12, 7, tzinfo=UTC), kwh=0.1 + 0.2)
    assert b'"kwh":0.3}' in reply(register).body  # 0.30000000000000004
