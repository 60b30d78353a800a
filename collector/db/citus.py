"""Citus (docs/scale.md): whether the database is a Citus coordinator, and distributing the
schema there (``energy_distribute()``, sql/011_citus.sql)."""

from __future__ import annotations

from collector.db.connection import Connection
from collector.errors import CollectorError


class CitusMissing(CollectorError):
    """``migrate --citus`` on a database without the citus extension."""


async def is_distributed(conn: Connection) -> bool:
    """Whether the history is distributed (the citus extension, and meter_readings in it)."""
    if not await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'citus'"):
        return False
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'meter_readings'::regclass"
        )
    )


async def distribute(conn: Connection) -> int:
    """Distribute what is not distributed yet; the number of tables it took."""
    if not await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'citus'"):
        raise CitusMissing(
            "the citus extension is not installed in this database: on the coordinator, "
            "CREATE EXTENSION citus; SELECT citus_set_coordinator_host(...); and "
            "citus_add_node(...) for each worker, then migrate --citus again"
        )
    done: int = await conn.fetchval("SELECT energy_distribute()")
    return done
