"""Dashboard sessions the server can end: a random id in the cookie, its digest in the
database (sql/005), the read token itself never leaves the login form.

A session is valid while its row exists, has not expired, and the token that opened it is
still one of ``READ_TOKENS``. Signing out deletes the row.

A read replica cannot write that row. There the cookie is *signed* instead
(:func:`signed_session`): its expiry and an HMAC of it keyed with the token's digest, so it
names no token and cannot be forged without one, and it is valid while unexpired and its
token is still configured. Signing out there clears the cookie only: to end every session
of a token at once, remove the token from ``READ_TOKENS``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
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


SIGNED_PREFIX = "s1."


def _mac(key: bytes, expires: int) -> str:
    return hmac.new(key, f"{SIGNED_PREFIX}{expires}".encode(), hashlib.sha256).hexdigest()


def signed_session(token: str, *, now: float | None = None) -> str:
    """A cookie value that needs no database row (read replicas): ``s1.<expiry>.<hmac>``."""
    expires = int((now or time.time()) + SESSION_LIFETIME.total_seconds())
    return f"{SIGNED_PREFIX}{expires}.{_mac(digest(token), expires)}"


def is_signed(session_id: str) -> bool:
    return session_id.startswith(SIGNED_PREFIX)


def signed_session_token(
    session_id: str, token_digests: Iterable[bytes], *, now: float | None = None
) -> bytes | None:
    """The digest of the configured token that signed this unexpired cookie, or None."""
    expiry, _, mac = session_id.removeprefix(SIGNED_PREFIX).partition(".")
    if not expiry.isdigit() or len(expiry) > 12 or int(expiry) <= (now or time.time()):
        return None
    found = None
    for key in token_digests:  # every one, so the timing says nothing about which
        if hmac.compare_digest(_mac(key, int(expiry)), mac):
            found = key
    return found


async def end_session(conn: Connection, session_id: str) -> None:
    if session_id:
        await conn.execute(
            "DELETE FROM dashboard_sessions WHERE id_sha256 = $1", digest(session_id)
        )
