"""Serving from a hot standby: knowing we are on one, its lag, and its recovery conflicts.

``energy-collector api`` may run against a streaming replica (docs/analytics.md, "Read
replicas"). There the API reads as anywhere else, but:

* every write (links, replacements, a dashboard session row) fails with SQLSTATE 25006;
  it is answered 503 naming the primary, never 500 (HTTP ingest is not served at all);
* a query can be cancelled when replay must remove rows it still sees (a "recovery
  conflict": SQLSTATE 40001 or 40P01). That is transient: a read is retried once, and
  then answered 503 with ``Retry-After``;
* ``/health`` reports the replication lag, and is 503 past ``REPLICA_MAX_LAG_S``.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from collector.db.connection import Connection

#: How long a client should wait before retrying a read cancelled by a recovery conflict.
RETRY_AFTER_S = 1

LAG = """
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            -- caught up with everything received: no lag, however idle the primary is
            WHEN pg_last_wal_receive_lsn() IS NOT NULL
                 AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
       END AS lag_s,
       pg_last_wal_receive_lsn()::text AS receive_lsn,
       pg_last_wal_replay_lsn()::text AS replay_lsn,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8
           AS replay_behind_bytes
"""


@dataclass(slots=True)
class DatabaseRole:
    """Whether the database is a standby: read at start and by every ``/health``, so a
    promoted replica is noticed."""

    in_recovery: bool = False

    async def refresh(self, conn: Connection) -> asyncpg.Record:
        row = await conn.fetchrow(LAG)
        assert row is not None
        self.in_recovery = bool(row["in_recovery"])
        return row


def is_recovery_conflict(exc: BaseException) -> bool:
    """A query cancelled by a standby's replay (transient: retry), as PostgreSQL reports
    it: 40001 "canceling statement due to conflict with recovery", or 40P01 for a
    buffer-pin deadlock with the startup process."""
    if not isinstance(exc, asyncpg.SerializationError | asyncpg.DeadlockDetectedError):
        return False
    return "conflict with recovery" in str(exc) or "recovery" in (exc.detail or "")


def is_read_only_refusal(exc: BaseException) -> bool:
    """A write refused because the database is a standby (25006)."""
    return isinstance(exc, asyncpg.ReadOnlySQLTransactionError)
