"""Dashboard sessions the server can end: a random id in the cookie, its digest in the
database (sql/005), the read token itself never leaves the login form.

A session is valid while its row exists, has not expired, and the token that opened it is
still one of ``READ_TOKENS``. Signing out deletes the row.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from collector.db.connection import Connection

#: How long a sign-in lasts.
SESSION_LIFETIME = timedelta(hours=12)


def digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


async def open_session(conn: Connection, token: str) -> str:
    """A new session for ``token`` (already checked); the id for the cookie."""
    session_id = secrets.token_urlsafe(32)
    await conn.execute("DELETE FROM dashboard_sessions WHERE expires_at < now()")
    await conn.execute(
        "INSERT INTO dashboard_sessions (id_sha256, token_sha256, expires_at) "
        "VALUES ($1, $2, now() + $3)",
        digest(session_id),
        digest(token),
        SESSION_LIFETIME,
    )
    return session_id


async def session_token(conn: Connection, session_id: str) -> bytes | None:
    """The digest of the token that opened this live session, or None."""
    if not session_id or len(session_id) > 128:
        return None
    token: bytes | None = await conn.fetchval(
        "SELECT token_sha256 FROM dashboard_sessions WHERE id_sha256 = $1 AND expires_at > now()",
        digest(session_id),
    )
    return token


async def end_session(conn: Connection, session_id: str) -> None:
    if session_id:
        await conn.execute(
            "DELETE FROM dashboard_sessions WHERE id_sha256 = $1", digest(session_id)
        )
