"""The chargers the collector knows, and the id tags that stand for vehicles.

Used by the CLI (``energy-collector chargers add|list|remove|tag``) and by the listener,
which asks at each WebSocket upgrade whether a charger may connect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from collector.errors import UsageError
from collector.sources.ocpp import passwords
from collector.sources.ocpp.naming import CHARGER_ID


class ChargerError(UsageError):
    """A charger command cannot be done; the message says why."""


def check_charger_id(charger_id: str) -> str:
    if not CHARGER_ID.fullmatch(charger_id):
        raise ChargerError(
            f"{charger_id!r} is not a charger id: 1-60 letters, digits and . _ : - "
            "(its connectors become meters {id}-{connector})"
        )
    return charger_id


@dataclass(frozen=True, slots=True)
class Admission:
    """What the listener decides at the upgrade: let the charger in, or refuse and why."""

    allowed: bool
    known: bool
    reason: str = ""


class ChargerBook:
    """Chargers and id tags in the database."""

    def __init__(self, pool: asyncpg.Pool, *, listed_only: bool = False) -> None:
        self._pool = pool
        #: OCPP_AUTHORIZE=listed: only the id tags registered with ``tag`` are allowed.
        self._listed_only = listed_only

    async def add(self, charger_id: str) -> str:
        """Register a charger and return its new password (only its hash is kept). Adding
        a known charger again gives it a new password."""
        password = passwords.generate()
        await self._pool.execute(
            """INSERT INTO chargers (id, password_hash) VALUES ($1, $2)
               ON CONFLICT (id) DO UPDATE SET password_hash = EXCLUDED.password_hash""",
            check_charger_id(charger_id),
            passwords.hash_password(password),
        )
        return password

    async def remove(self, charger_id: str) -> bool:
        """Forget a charger (its sessions and readings stay); False when it was unknown."""
        status = await self._pool.execute("DELETE FROM chargers WHERE id = $1", charger_id)
        await self._pool.execute("DELETE FROM charger_connectors WHERE charger_id = $1", charger_id)
        return status != "DELETE 0"

    async def list(self) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            """SELECT id, password_hash IS NOT NULL AS has_password, created_at, protocol,
                      vendor, model, firmware, connected, last_seen_at
                 FROM chargers ORDER BY id"""
        )
        return [dict(r) for r in rows]

    async def tag(self, id_tag: str, vehicle_id: str | None, *, allowed: bool = True) -> None:
        """Map an id tag to a vehicle (or to none), and allow or refuse it at Authorize."""
        await self._pool.execute(
            """INSERT INTO charger_id_tags (id_tag, vehicle_id, allowed) VALUES ($1, $2, $3)
               ON CONFLICT (id_tag) DO UPDATE
               SET vehicle_id = EXCLUDED.vehicle_id, allowed = EXCLUDED.allowed""",
            id_tag,
            vehicle_id,
            allowed,
        )

    async def admit(
        self,
        charger_id: str,
        credentials: tuple[str, str] | None,
        *,
        accept_unknown: bool,
        check_password: bool = True,
    ) -> Admission:
        """May this charger connect? A known charger with a password must send it (HTTP
        Basic, user = its id); an unknown one only with ``OCPP_ACCEPT_UNKNOWN``. In relay
        mode (``check_password`` False) the credentials are the operator's CSMS's to check:
        they are passed on to it."""
        row = await self._pool.fetchrow(
            "SELECT password_hash FROM chargers WHERE id = $1", charger_id
        )
        if row is None:
            if accept_unknown:
                return Admission(True, known=False)
            return Admission(False, known=False, reason="unknown charger")
        stored: str | None = row["password_hash"]
        if stored is None or not check_password:
            return Admission(True, known=True)
        if credentials is None:
            return Admission(False, known=True, reason="no credentials (HTTP Basic)")
        user, password = credentials
        if user != charger_id or not passwords.verify(password, stored):
            return Admission(False, known=True, reason="wrong credentials")
        return Admission(True, known=True)

    async def vehicle_of(self, id_tag: str | None) -> tuple[bool, str | None]:
        """(allowed, vehicle) of an id tag: an unknown one stands for no vehicle, and is
        allowed unless only listed tags are (``OCPP_AUTHORIZE=listed``)."""
        if not id_tag:
            return not self._listed_only, None
        row = await self._pool.fetchrow(
            "SELECT allowed, vehicle_id FROM charger_id_tags WHERE id_tag = $1", id_tag
        )
        if row is None:
            return not self._listed_only, None
        return row["allowed"], row["vehicle_id"]


def describe_row(row: dict[str, Any]) -> str:
    """One line of ``chargers list``."""
    seen: datetime | None = row["last_seen_at"]
    parts = [
        row["id"],
        "password" if row["has_password"] else "no password",
        row["protocol"] or "never connected",
        " ".join(p for p in (row["vendor"], row["model"], row["firmware"]) if p) or "-",
        ("connected" if row["connected"] else "disconnected")
        + (f", last seen {seen.isoformat(timespec='seconds')}" if seen else ""),
    ]
    return "  ".join(parts)
