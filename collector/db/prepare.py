"""Getting the collector's database ready: one procedure for run, migrate, import and check.

``prepare_database`` creates the database if it is missing, connects, and applies the
pending migrations (``MIGRATE_ON_START=true``, or ``migrate``) or refuses to go on while
any are pending. ``inspect_database`` reports the same facts without changing anything
(``check``). Errors are converted here into :class:`DatabaseUnreachable` (worth retrying:
the server is away) or :class:`DatabaseNotReady` (an operator must act).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg

from collector.db.migrations import (
    Migration,
    MigrationError,
    ensure_database,
    migrate,
    pending_migrations,
)
from collector.errors import CollectorError
from collector.settings import Settings

#: Errors that mean "the server is not there (yet)", as opposed to a refusal.
UNREACHABLE_ERRORS = (OSError, TimeoutError, asyncpg.CannotConnectNowError)


class DatabaseUnreachable(CollectorError):
    """The database server cannot be reached now; trying again later may succeed."""


class DatabaseNotReady(CollectorError):
    """The database refused the collector, or its schema is not what this version needs."""


@dataclass(frozen=True, slots=True)
class DatabaseState:
    """What ``check`` reports about the database."""

    exists: bool
    server_version: str | None = None
    pending: tuple[Migration, ...] = ()


def server_address(dsn: str) -> str:
    url = urlsplit(dsn)
    return f"{url.hostname or 'localhost'}:{url.port or 5432}"


def migration_names(migrations: tuple[Migration, ...] | list[Migration]) -> str:
    """``003_partitions_and_rollups, 004_...`` for messages."""
    return ", ".join(f"{m.version:03d}_{m.name}" for m in migrations)


async def create_pool(
    settings: Settings,
    *,
    min_size: int,
    max_size: int,
    application_name: str = "energy-collector",
    server_settings: dict[str, str] | None = None,
    command_timeout: float = 60,
) -> asyncpg.Pool:
    """A connection pool to the collector's database."""
    return await asyncpg.create_pool(
        settings.database_url.get_secret_value(),
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        server_settings=_server_settings(application_name, server_settings),
    )


async def connect(
    settings: Settings,
    *,
    application_name: str,
    server_settings: dict[str, str] | None = None,
    command_timeout: float = 60,
) -> asyncpg.Connection:
    """A connection of its own (one that holds a session lock, which a pool would reset)."""
    return await asyncpg.connect(
        settings.database_url.get_secret_value(),
        command_timeout=command_timeout,
        timeout=10,
        server_settings=_server_settings(application_name, server_settings),
    )


def _server_settings(application_name: str, extra: dict[str, str] | None) -> dict[str, str]:
    # JIT compilation costs more than it saves on these short statements.
    return {"application_name": application_name, "jit": "off", "timezone": "UTC", **(extra or {})}


async def prepare_database(settings: Settings, *, migrate_now: bool | None = None) -> list[int]:
    """Make the database ready for this version; returns the migrations applied now.

    ``migrate_now`` defaults to ``MIGRATE_ON_START``: apply what is pending, or raise
    :class:`DatabaseNotReady` naming it.
    """
    dsn = settings.database_url.get_secret_value()
    apply = settings.migrate_on_start if migrate_now is None else migrate_now
    where = server_address(dsn)
    try:
        if apply:
            await ensure_database(dsn)
        conn = await asyncpg.connect(dsn, timeout=10)
    except UNREACHABLE_ERRORS as exc:
        raise DatabaseUnreachable(
            f"cannot prepare the database: cannot reach the database server at {where} "
            f"({_reason(exc)})"
        ) from exc
    except asyncpg.InvalidCatalogNameError as exc:
        raise DatabaseNotReady(
            f"database {settings.database_name!r} does not exist; run `energy-collector "
            "migrate` or set MIGRATE_ON_START=true"
        ) from exc
    except asyncpg.PostgresError as exc:
        raise DatabaseNotReady(f"database at {where} refused the connection: {exc}") from exc
    try:
        if apply:
            try:
                return await migrate(conn)
            except MigrationError as exc:
                raise DatabaseNotReady(str(exc)) from exc
        pending = await pending_migrations(conn)
        if pending:
            raise DatabaseNotReady(
                f"schema is not up to date (pending: {migration_names(pending)}); "
                "run `energy-collector migrate` or set MIGRATE_ON_START=true"
            )
        return []
    finally:
        await conn.close()


async def inspect_database(settings: Settings) -> DatabaseState:
    """Connect and read the server version and pending migrations; change nothing."""
    dsn = settings.database_url.get_secret_value()
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except asyncpg.InvalidCatalogNameError:
        return DatabaseState(exists=False)
    except UNREACHABLE_ERRORS as exc:
        raise DatabaseUnreachable(f"cannot connect: {_reason(exc)}") from exc
    except asyncpg.PostgresError as exc:
        raise DatabaseNotReady(f"cannot connect: {exc}") from exc
    try:
        version = conn.get_settings().server_version.split()[0]
        pending = await pending_migrations(conn)
    finally:
        await conn.close()
    return DatabaseState(exists=True, server_version=version, pending=tuple(pending))


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
