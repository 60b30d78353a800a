"""A small fleet with known figures, relative to now (the dashboard shows the last 24 h).

Every 10 minutes over the last 3 hours (18 readings each):

    VG on mA: AC 1.0, DC 0.9 -> 0.900 normal
    VL on mB: AC 1.0, DC 0.7 -> 0.700 low_efficiency
    VX on mC: AC 1.0, DC 1.1 -> 1.100 anomaly
    VU (never linked): DC 0.5 -> insufficient_data
    VS on mD: only 2-3 h ago (7 readings each): AC 1.0, DC 0.9 -> normal, both silent

    AC = 3 x 18 + 7 = 61; DC = 18 x 3.2 + 6.3 = 63.9;
    efficiency over the linked vehicles = (16.2 + 12.6 + 19.8 + 6.3) / 61 = 0.9
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from api.queries import links as q
from collector.db.partitions import HISTORY_TABLES, partition_days
from tests.helpers import eventually, load

LINKS = {"VG": "mA", "VL": "mB", "VX": "mC", "VS": "mD"}
DC = {"VG": 0.9, "VL": 0.7, "VX": 1.1, "VU": 0.5, "VS": 0.9}
SOC = {"VG": 81.5, "VL": 40.0, "VX": 62.0, "VU": 15.0, "VS": 55.0}
EXPECTED = {
    "ac": "61.0",
    "dc": "63.9",
    "efficiency": "0.900",
    "status": {
        "VG": "normal",
        "VL": "low efficiency",
        "VX": "anomaly",
        "VU": "insufficient data",
        "VS": "normal",
    },
    "silent": {"VS"},
}


async def partitions_ready(conn: asyncpg.Connection) -> None:
    """Wait for the running collector's first partition maintenance (today's partitions):
    rows written while it creates them would race it (the writer retries; ``load`` not)."""
    today = datetime.now(UTC).date()
    for table in HISTORY_TABLES:
        await eventually(lambda t=table: partition_days(conn, t), lambda days: today in days)


async def load_known_fleet(conn: asyncpg.Connection) -> datetime:
    """Store the fleet above; returns the 'now' it is relative to."""
    await partitions_ready(conn)
    now = datetime.now(UTC).replace(microsecond=0)
    recent = [now - timedelta(minutes=10 * k) for k in range(1, 19)]
    old = [now - timedelta(minutes=10 * k) for k in range(12, 19)]
    meters = [(m, ts, 1.0, 230.0) for m in ("mA", "mB", "mC") for ts in recent]
    meters += [("mD", ts, 1.0, 231.0) for ts in old]
    vehicles = [
        (v, ts, SOC[v], DC[v], 30.0 + i * 0.1)
        for v in ("VG", "VL", "VX", "VU")
        for i, ts in enumerate(reversed(recent))
    ]
    vehicles += [("VS", ts, SOC["VS"], DC["VS"], 28.0) for ts in old]
    await load(conn, meters=meters, vehicles=vehicles)
    for vehicle, meter in LINKS.items():
        await q.put_link(conn, vehicle, meter, now - timedelta(days=1))
    return now
