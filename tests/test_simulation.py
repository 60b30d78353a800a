"""The simulated fleet keeps its promises: plausible physics, faults at the asked rates."""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from collector.ingest.readings import MeterReading, Reason, Rejection
from collector.ingest.streams import STREAMS
from collector.ingest.validation import ReadingValidator
from collector.tools.fleet import MALFORMED_KINDS, FaultInjector, Fleet, Message, ticks

START = datetime(2026, 2, 9, tzinfo=UTC)
VALIDATOR = ReadingValidator(max_payload_bytes=4096, max_future_skew_s=300)
HORIZON = datetime(2100, 1, 1, tzinfo=UTC)


def run_day(fleet: Fleet, interval_s: float = 300, hours: float = 24) -> list[Message]:
    out: list[Message] = []
    times = ticks(START, interval_s)
    for _ in range(int(hours * 3600 / interval_s)):
        out.extend(fleet.step(next(times), interval_s))
    return out


@pytest.fixture(scope="module")
def day() -> tuple[Fleet, list[Message]]:
    fleet = Fleet(200, 200, faulty_share=0.1, seed=7)
    return fleet, run_day(fleet)


def validate(m: Message) -> object:
    return VALIDATOR.validate(
        STREAMS[m.kind], m.payload, source=m.topic, expected_id=m.device_id, horizon=HORIZON
    )


def test_every_clean_reading_passes_the_collectors_validation(day):
    _fleet, messages = day
    assert len(messages) == 400 * 288
    rejected = [m for m in messages if isinstance(validate(m), Rejection)]
    assert rejected == []


def test_efficiency_is_about_0_9_and_faulty_chargers_are_well_below(day):
    fleet, messages = day
    ac: Counter[str] = Counter()
    dc: Counter[str] = Counter()
    for m in messages:
        body = json.loads(m.payload)
        if m.kind == "meter":
            ac[m.device_id] += body["kwhConsumedAc"]
        else:
            dc[m.device_id] += body["kwhDeliveredDc"]
    assert len(fleet.faulty_meters) == 20  # 10 % of 200
    healthy, faulty = [], []
    for vehicle_id, meter_id in fleet.links:
        efficiency = dc[vehicle_id] / ac[meter_id]
        (faulty if meter_id in fleet.faulty_meters else healthy).append(efficiency)
    assert len(healthy) == 180 and len(faulty) == 20
    assert 0.88 <= statistics.mean(healthy) <= 0.92
    assert min(healthy) > 0.85  # none would be flagged low_efficiency
    assert max(healthy) < 0.95
    assert statistics.stdev(healthy) > 0.005  # noise, not one constant
    assert max(faulty) < 0.8
    # A day of charging: a plausible amount of energy per meter (kWh).
    assert 5 < statistics.mean(ac[m] for _, m in fleet.links) < 60


def vehicle_series(messages: list[Message]) -> dict[str, list[dict]]:
    series: dict[str, list[dict]] = defaultdict(list)
    for m in messages:
        if m.kind == "vehicle":
            series[m.device_id].append(json.loads(m.payload))
    return series


def test_soc_rises_while_charging_and_only_falls_while_not(day):
    _fleet, messages = day
    charging_steps = 0
    for readings in vehicle_series(messages).values():
        for before, after in itertools.pairwise(readings):
            assert 0 <= after["soc"] <= 100
            if after["kwhDeliveredDc"] > 0:
                charging_steps += 1
                assert after["soc"] >= before["soc"]
            else:
                assert after["soc"] <= before["soc"]
    assert charging_steps > 1000


def test_battery_temperature_follows_the_load(day):
    _fleet, messages = day
    charging, resting = [], []
    for readings in vehicle_series(messages).values():
        for before, after in itertools.pairwise(readings):
            if after["kwhDeliveredDc"] > 0:
                charging.append(after["batteryTemp"])
            elif after["soc"] == before["soc"]:
                resting.append(after["batteryTemp"])
    assert statistics.mean(charging) > statistics.mean(resting) + 3
    assert min(resting) > -40 and max(charging) < 80


def test_links_pair_each_vehicle_with_its_home_meter():
    fleet = Fleet(3, 5, seed=1)
    assert fleet.links == [
        ("vehicle-001", "meter-001"),
        ("vehicle-002", "meter-002"),
        ("vehicle-003", "meter-003"),
    ]
    messages = run_day(fleet, hours=12)
    # Vehicles without a charger never charge.
    for vehicle_id in ("vehicle-004", "vehicle-005"):
        assert all(
            json.loads(m.payload)["kwhDeliveredDc"] == 0
            for m in messages
            if m.device_id == vehicle_id
        )


def test_the_same_seed_gives_the_same_readings():
    first = run_day(Fleet(20, 20, seed=3), hours=2)
    again = run_day(Fleet(20, 20, seed=3), hours=2)
    other = run_day(Fleet(20, 20, seed=4), hours=2)
    assert [m.payload for m in first] == [m.payload for m in again]
    assert [m.payload for m in first] != [m.payload for m in other]


def within(observed: int, n: int, rate: float) -> bool:
    """``observed`` is within 5 standard deviations of a binomial(n, rate) mean."""
    mean = n * rate
    return abs(observed - mean) <= 5 * math.sqrt(n * rate * (1 - rate)) + 1


def test_faults_come_at_the_asked_rates_and_do_what_they_say():
    fleet = Fleet(100, 100, seed=11)
    injector = FaultInjector(
        random.Random(5), duplicate_rate=0.02, out_of_order_rate=0.03, malformed_rate=0.01
    )
    clean, sent = [], []
    times = ticks(START, 60)
    for _ in range(300):
        tick = fleet.step(next(times), 60)
        clean.extend(tick)
        sent.extend(injector.apply(tick))
    held_at_end = injector.flush()  # held back in the last tick: nothing newer follows
    sent.extend(held_at_end)
    n, stats = len(clean), injector.stats
    assert n == 60_000
    assert within(stats.malformed_total, n, 0.01)
    assert within(stats.duplicates, n, 0.02 * 0.99 * 0.97)  # never of a held or broken one
    # A device with a packet already held back is not held again: slightly below the rate.
    assert within(stats.out_of_order, n, 0.03 * 0.99 * 0.97)
    assert set(stats.malformed) == set(MALFORMED_KINDS)

    outcomes = [validate(m) for m in sent]
    rejected = [o for o in outcomes if isinstance(o, Rejection)]
    assert len(rejected) == stats.malformed_total
    reasons = Counter(r.reason for r in rejected)
    assert set(reasons) <= {
        Reason.INVALID_JSON,
        Reason.MISSING_FIELD,
        Reason.OUT_OF_RANGE,
        Reason.ID_MISMATCH,
        Reason.INVALID_TIMESTAMP,
    }
    assert reasons[Reason.ID_MISMATCH] == stats.malformed["id_mismatch"]
    # Every clean reading not malformed arrives, duplicates add exact copies only.
    accepted = [o for o in outcomes if not isinstance(o, Rejection)]
    assert len(accepted) == n - stats.malformed_total + stats.duplicates
    assert len({(r.device_id, r.timestamp) for r in accepted}) == n - stats.malformed_total

    # Out of order: a held packet arrives after a newer packet of the same device.
    late = 0
    newest: dict[tuple[str, str], datetime] = {}
    for m in sent:
        key = (m.kind, m.device_id)
        if key in newest and m.ts < newest[key]:
            late += 1
        newest[key] = max(m.ts, newest.get(key, m.ts))
    assert late == stats.out_of_order - len(held_at_end)


def test_rates_are_checked():
    with pytest.raises(ValueError, match="malformed_rate"):
        FaultInjector(random.Random(), malformed_rate=1.5)
    with pytest.raises(ValueError, match="faulty_share"):
        Fleet(1, 1, faulty_share=-0.1)


def test_a_reading_is_a_valid_payload_of_the_contract():
    (m,) = [x for x in Fleet(1, 0, seed=1).step(START + timedelta(minutes=1), 60)]
    reading = validate(m)
    assert isinstance(reading, MeterReading)
    assert reading.meterId == "meter-001" and reading.timestamp == START + timedelta(minutes=1)
    assert m.topic == "meters/meter-001/reading"
