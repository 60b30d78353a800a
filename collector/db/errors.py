"""Which database errors retrying can fix, and what to tell the operator about the others.

The writer retries every failed write, so nothing accepted is dropped. But a missing
privilege, a missing table or database, or a wrong password do not go away by waiting: they
need an operator. :func:`diagnose` tells the two apart by SQLSTATE, so the log and
``/health`` say "fix this" instead of looking like an outage that will pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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


#: SQLSTATE classes of a connection that is gone or a server that is not (yet) there:
#: 08 connection exception, 57P01-57P05 shutdown, crash, cannot connect now, idle timeout.
UNAVAILABLE_SQLSTATES = ("08", "57P")
#: A statement that ran out of time: not the rows' fault, the server is slow.
TIMEOUT_SQLSTATES = ("57014",)

Cause = Literal["unavailable", "configuration", "timeout", "statement"]


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """A failed database call, for logs and /health.

    ``cause``: ``unavailable`` (the server or the connection is away: wait),
    ``configuration`` (waiting will not fix it: ``hint`` says what will), ``timeout`` (the
    server is slow), ``statement`` (this statement failed, e.g. out of shared memory or a
    deadlock: it may pass again, or the batch itself may be what the server cannot take).
    """

    error: str  # "ExceptionClass: message"
    cause: Cause
    sqlstate: str | None = None
    hint: str | None = None

    @property
    def permanent(self) -> bool:
        return self.cause == "configuration"


def diagnose(exc: BaseException) -> Diagnosis:
    """Describe ``exc`` and sort it by what retrying can do about it."""
    error = f"{type(exc).__name__}: {exc}".strip().removesuffix(":")
    sqlstate = exc.sqlstate if isinstance(exc, asyncpg.PostgresError) else None
    hint = PERMANENT_SQLSTATES.get(sqlstate or "")
    cause: Cause
    if hint is not None:
        cause = "configuration"
    elif sqlstate is None:
        # No answer from the server: refused, reset, closed (OSError, InterfaceError), or
        # the client's own timeout.
        cause = "timeout" if isinstance(exc, TimeoutError) else "unavailable"
    elif sqlstate.startswith(UNAVAILABLE_SQLSTATES):
        cause = "unavailable"
    elif sqlstate.startswith(TIMEOUT_SQLSTATES):
        cause = "timeout"
    else:
        cause = "statement"
    return Diagnosis(error=error, cause=cause, sqlstate=sqlstate, hint=hint)
