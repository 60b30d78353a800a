"""The register rules (collector/ingest/booking/registers.py), pure: the table, every order."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest

from collector.ingest.booking import registers
from collector.ingest.booking.registers import (
    DEFAULT_LIMITS,
    Chain,
    Point,
    Quality,
    RegisterLimits,
    Replacement,
    book,
    increment,
)

T0 = datetime(2026, 2, 9, 10, 0, tzinfo=UTC)
RULES = RegisterLimits(dip_kwh=0.05, max_kw=400.0)


def at(i: int) -> datetime:
    return T0 + timedelta(minutes=i)


def booked(values, rules=RULES, **kwargs):
    points = [Point(at(i), v) for i, v in enumerate(values)]
    out = book(points, rules, **kwargs)
    return [round(b.kwh, 6) for b in out], [b.quality for b in out]


Q = Quality
B, OK = Q.BASELINE, Q.OK
WRAP = RegisterLimits(dip_kwh=0.05, max_kw=400.0, wrap_kwh=100000.0)
#: (case, registers in time order, energy booked, why) as in the issue
TABLE = [
    ("increments", [100.0, 100.5, 101.0], [0, 0.5, 0.5], [B, OK, OK], RULES),
    ("glitch", [100.0, 100.5, 0.0, 101.0], [0, 0.5, 0, 0.5], [B, OK, Q.GLITCH, OK], RULES),
    ("reset", [100.0, 100.5, 0.2, 0.6], [0, 0.5, 0.2, 0.4], [B, OK, Q.RESET, OK], RULES),
    ("dip", [100.0, 100.5, 100.49, 101.0], [0, 0.5, 0, 0.5], [B, OK, Q.DIP, OK], RULES),
    ("implausible", [100.0, 100.5, 5000.0, 101.0], [0, 0.5, 0, 0.5],
     [B, OK, Q.QUARANTINED, OK], RULES),
    ("rollover", [99999.5, 0.3], [0, 0.8], [B, Q.ROLLOVER], WRAP),
    # a downward re-sync by 1 kWh is no reset: 12,344.6 kWh cannot flow in a minute
    ("downward shift", [12345.6, 12344.6, 12344.7], [0, 0, 0.1], [B, Q.SHIFT, OK], RULES),
]  # fmt: skip


@pytest.mark.parametrize(("name", "values", "kwh", "quality", "rules"), TABLE)
def test_the_table(name, values, kwh, quality, rules):
    assert booked(values, rules) == (kwh, quality), name


def test_a_drop_or_a_jump_is_pending_until_the_next_reading():
    assert booked([100.0, 100.5, 0.0]) == ([0, 0.5, 0], [Q.BASELINE, Q.OK, Q.PENDING_DROP])
    assert booked([100.0, 100.5, 5000.0]) == ([0, 0.5, 0], [Q.BASELINE, Q.OK, Q.PENDING_JUMP])
    # decided by a reading known to come after
    after = Point(at(3), 0.6)
    assert booked([100.0, 100.5, 0.2], after=after)[1][-1] is Q.RESET


def test_a_jump_that_the_next_reading_continues_is_a_new_level():
    kwh, quality = booked([100.0, 100.5, 5000.0, 5000.4])
    assert kwh == [0, 0.5, 0, 0.4] and quality[2] is Q.SHIFT


def test_an_interval_reading_breaks_the_chain():
    points = [Point(at(0), 100.0), Point(at(1), None, kwh=0.3), Point(at(2), 100.6)]
    out = book(points, RULES)
    assert [b.kwh for b in out] == [0, 0.3, 0]  # no double count of what 0.3 covered
    assert out[2].quality is Q.BASELINE


def test_a_replacement_makes_one_continuous_history():
    at_swap = at(1) + timedelta(seconds=30)
    swap = Replacement(at_swap, final_kwh=100.7, start_kwh=3.0)
    kwh, quality = booked([100.0, 100.5, 3.4, 3.9], replacements=[swap])
    assert kwh == [0, 0.5, pytest.approx(0.6), 0.5]  # 0.2 of the old tail + 0.4 of the new
    assert quality[2] is Q.REPLACED
    unknown = Replacement(at_swap)  # nothing known but the time: the new register's baseline
    assert booked([100.0, 100.5, 3.4, 3.9], replacements=[unknown])[0] == [0, 0.5, 0, 0.5]


def test_no_interval_books_more_than_the_power_ceiling_allows():
    """Whatever a reading is taken for, nothing it books exceeds REGISTER_MAX_KW x the time
    since the level was set: a reset books only what could have flowed since."""
    ceiling = RULES.max_kw / 60  # kWh in a minute
    for values in (
        [12345.6, 12344.6, 12344.7],  # re-sync down by 1 kWh
        [5000.0, 4000.0, 4000.5],  # a bigger one
        [100.0, 100.5, 0.2, 0.6],  # a real reset: books the 0.2 used since
        [100.0, 100.5, 7.0, 7.1],  # 7 kWh in a minute: above 400 kW, a re-sync
    ):
        kwh, _ = booked(values)
        assert all(k <= ceiling + 1e-9 for k in kwh), (values, kwh)
    assert booked([100.0, 100.5, 7.0, 7.1])[1][2] is Q.SHIFT
    assert booked([100.0, 100.5, 6.0, 6.1])[1][2] is Q.RESET  # 6 kWh in a minute: 360 kW


def test_a_replacement_books_no_tail_the_power_ceiling_does_not_allow():
    at_swap = at(1) + timedelta(seconds=30)
    huge = Replacement(at_swap, final_kwh=1_000_000.0, start_kwh=3.0)
    kwh, quality = booked([100.0, 100.5, 3.4, 3.9], replacements=[huge])
    assert kwh == [0, 0.5, pytest.approx(0.4), 0.5]  # the new register's 0.4, no tail
    assert quality[2] is Q.REPLACED


SEQUENCES = [values for _, values, *_ in TABLE] + [
    [10.0, 10.2, 10.19, 0.0, 10.5, 10.7, 0.1, 0.3, 0.8, 900.0, 1.0, 1.2],
]


@pytest.mark.parametrize("values", SEQUENCES)
def test_the_booking_is_a_function_of_the_set_not_of_the_arrival_order(values):
    """Whatever order readings arrive in, recomputing the sorted set books the same."""
    rules = RegisterLimits(dip_kwh=0.05, max_kw=400.0, wrap_kwh=100000.0)
    points = [Point(at(i), v) for i, v in enumerate(values)]
    expected = book(points, rules)
    rng = random.Random(7)
    for _ in range(20):
        arrived: list[Point] = []
        for p in rng.sample(points, len(points)):
            arrived.append(p)
            book(sorted(arrived, key=lambda x: x.ts), rules)  # what the writer does each time
        assert book(sorted(arrived, key=lambda x: x.ts), rules) == expected


def test_nothing_is_ever_booked_negative():
    rules = RegisterLimits(dip_kwh=0.05, max_kw=400.0, wrap_kwh=1000.0)
    rng = random.Random(3)
    for _ in range(200):
        values = [round(rng.uniform(0, 1000), 2) for _ in range(8)]
        for perm in itertools.islice(itertools.permutations(values), 5):
            assert all(
                b.kwh >= 0 for b in book([Point(at(i), v) for i, v in enumerate(perm)], rules)
            )


def test_the_writers_shortcut_books_what_book_books():
    """``increment`` (the writer's usual case, without objects) agrees with ``book`` on a
    reading after a settled one, and declines everything else."""
    rng = random.Random(7)
    for _ in range(2000):
        level = rng.choice([None, rng.uniform(0, 1000)])
        since = T0 - timedelta(seconds=rng.choice([0, 1, 60, 3600]))
        value = rng.choice([rng.uniform(0, 1000), (level or 0) + rng.uniform(-0.1, 0.5)])
        ts = T0 + timedelta(seconds=rng.choice([1, 60]))
        expected = book(
            [Point(ts, value)],
            DEFAULT_LIMITS,
            start=Chain(level, since if level is not None else None),
            previous_ts=since,
        )[0]
        got = increment(value, ts, level, since if level is not None else None, DEFAULT_LIMITS)
        if expected.quality in (Quality.OK, Quality.BASELINE):
            assert got == registers.booked(expected)
        else:  # a dip, a drop or a jump: the full rules decide it
            assert got is None
