"""The efficiency verdict, idle buckets included (pure: no services)."""

from __future__ import annotations

import pytest

from api.policy import EfficiencyBands

RULES = EfficiencyBands(low=0.85, high=1.0, idle_kw=0.05)


@pytest.mark.parametrize(
    ("ac", "dc", "hours", "ratio", "verdict"),
    [
        (10.0, 9.0, 1, 0.9, "normal"),
        (10.0, 7.0, 1, 0.7, "low_efficiency"),
        (10.0, 11.0, 1, 1.1, "anomaly"),
        # standby: a few Wh in an hour, nothing into the battery -> idle, not 0.0
        (0.004, 0.0, 1, None, "idle"),
        (0.049, 0.03, 1, None, "idle"),
        # the floor scales with the bucket: 0.3 kWh is idle over a day, judged over 1 h
        (0.3, 0.0, 24, None, "idle"),
        (0.3, 0.0, 1, 0.0, "low_efficiency"),
        # DC above the floor with next to no AC is still an anomaly
        (0.01, 2.0, 1, 200.0, "anomaly"),
        (0.0, 0.0, 1, None, "insufficient_data"),
    ],
)
def test_verdicts(ac, dc, hours, ratio, verdict):
    got_ratio, got = RULES.judge(ac, dc, 5, 5, hours)
    assert got == verdict
    assert got_ratio == (None if ratio is None else pytest.approx(ratio))


def test_no_readings_of_one_stream_is_insufficient_data():
    assert RULES.judge(5.0, 0.0, 3, 0, 1) == (0.0, "insufficient_data")


def test_idle_off():
    assert EfficiencyBands(low=0.85, high=1.0).judge(0.004, 0.0, 5, 5, 1)[1] == "low_efficiency"
