"""Versioned schema migrations: ``sql/NNN_name.sql`` files applied in order and recorded.

Each file runs in its own transaction under an advisory lock, so several collectors starting
at once apply it once. A file that was changed after it was applied is refused (its checksum
no longer matches), because the database would silently differ from what the file says.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog

from collector.db.connection import Connection
from collector.errors import CollectorError

log = structlog.get_logger(__name__)

_FILE_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")
# pg_advisory_lock key: any constant unique to this application.
_LOCK_KEY = 0x656E6572_6779  # "energy"


class MigrationError(CollectorError):
    """The schema cannot be brought up to date; the message says why."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    """The migrations shipped with the package, in version order."""
    found = []
    for entry in importlib.resources.files("collector.sql").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(versions) != len(set(versions)):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


async def ensure_database(dsn: str) -> bool:
    """Create the database named in ``dsn`` if it does not exist. Returns True if created."""
    url = urlsplit(dsn)
    name = url.path.strip("/")
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    maintenance = urlunsplit(url._replace(path="/postgres"))
    conn = await asyncpg.connect(maintenance)
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            # Another collector created it meanwhile; at the same instant PostgreSQL reports
            # a unique violation on pg_database instead.
            return False
    finally:
        await conn.close()
    log.info("database.created", database=name)
    return True


async def migrate(conn: Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply the pending migrations; returns the versions applied now."""
    migrations = available_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer     PRIMARY KEY,
                   name       text        NOT NULL,
                   checksum   text        NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now()
               )"""
        )
        applied = {
            row["version"]: row for row in await conn.fetch("SELECT * FROM schema_migrations")
        }
        done = []
        for migration in migrations:
            row = applied.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:03d}_{migration.name}.sql was changed "
                        "after it was applied; add a new migration instead of editing it"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("migration.applied", version=migration.version, name=migration.name)
            done.append(migration.version)
        unknown = sorted(set(applied) - {m.version for m in migrations})
        if unknown:
            log.warning(
                "migration.unknown_versions",
                versions=unknown,
                hint="the database was migrated by a newer collector",
            )
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def pending_migrations(conn: Connection) -> list[Migration]:
    """Migrations not applied yet (all of them on an empty database)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied = set()
    if exists:
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m for m in available_migrations() if m.version not in applied]
