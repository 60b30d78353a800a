"""Which database errors retrying can fix, and what to tell the operator about the others.

The writer retries every failed write, so nothing accepted is dropped. But a missing
privilege, a missing table or database, or a wrong password do not go away by waiting: they
need an operator. :func:`diagnose` tells the two apart by SQLSTATE, so the log and
``/health`` say "fix this" instead of looking like an outage that will pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

#: SQLSTATE -> what to do. Errors with these codes are not transient.
PERMANENT_SQLSTATES = {
    "42501": "the database user lacks a privilege on the collector's tables: GRANT it "
    "(see the README's database section)",
    "42P01": "a table the collector writes is missing: run `energy-collector migrate`",
    "42703": "a column the collector writes is missing: run `energy-collector migrate`",
    "3F000": "the schema the collector writes to is missing: run `energy-collector migrate`",
    "3D000": "the database does not exist: create it or run `energy-collector migrate`",
    "28P01": "the database password is wrong: fix DATABASE_URL",
    "28000": "the database refuses this user (pg_hba.conf or a missing role): fix DATABASE_URL "
    "or the server's authentication",
    "25006": "the database is read-only (a standby?): point DATABASE_URL at the primary",
}


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """A failed database call, for logs and /health."""

    error: str  # "ExceptionClass: message"
    permanent: bool
    sqlstate: str | None = None
    hint: str | None = None


def diagnose(exc: BaseException) -> Diagnosis:
    """Describe ``exc``; ``permanent`` when retrying alone cannot fix it."""
    error = f"{type(exc).__name__}: {exc}".strip().removesuffix(":")
    sqlstate = exc.sqlstate if isinstance(exc, asyncpg.PostgresError) else None
    hint = PERMANENT_SQLSTATES.get(sqlstate or "")
    return Diagnosis(error=error, permanent=hint is not None, sqlstate=sqlstate, hint=hint)
