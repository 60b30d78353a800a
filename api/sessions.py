"""Dashboard sessions the server can end: a random id in the cookie, its digest in the
database (sql/005), the read token itself never leaves the login form.

A session is valid while its row exists, has not expired, and the token that opened it is
still one of ``READ_TOKENS``. Signing out deletes the row.

A read replica cannot write that row. There the cookie is *signed* instead
(:func:`signed_session`): its expiry and an HMAC of it keyed with a key derived from the
token itself (not its SHA-256, which the sessions table holds), so it names no token and
cannot be forged without one. It is accepted only by an instance on a read replica, for at
most ``SIGNED_LIFETIME`` (an expiry further ahead is refused), while its token is still
configured. Signing out there clears the cookie only: to end every session of a token at
once, remove the token from ``READ_TOKENS``.
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


#: Signed sessions are of this form; "s1." (keyed with the token's digest, any expiry)
#: is refused: its key was the digest stored beside the sessions.
SIGNED_PREFIX = "s2."
#: How long a signed session lasts: it cannot be ended by signing out, so not long.
SIGNED_LIFETIME = timedelta(hours=1)
#: Clock difference between replicas tolerated on a signed session's expiry.
_SKEW_S = 60
_KEY_LABEL = b"energy-collector replica dashboard session v2"


def signing_key(token: bytes) -> bytes:
    """The key of a token's signed sessions: an HMAC of a fixed label with the token itself,
    so it cannot be made from the token's SHA-256 kept in ``dashboard_sessions``."""
    return hmac.new(token, _KEY_LABEL, hashlib.sha256).digest()


def _mac(key: bytes, expires: int) -> str:
    return hmac.new(key, f"{SIGNED_PREFIX}{expires}".encode(), hashlib.sha256).hexdigest()


def signed_session(token: str, *, now: float | None = None) -> str:
    """A cookie value that needs no database row (read replicas): ``s2.<expiry>.<hmac>``."""
    expires = int((now or time.time()) + SIGNED_LIFETIME.total_seconds())
    return f"{SIGNED_PREFIX}{expires}.{_mac(signing_key(token.encode()), expires)}"


def is_signed(session_id: str) -> bool:
    return session_id.startswith(("s1.", SIGNED_PREFIX))


def signed_session_token(
    session_id: str, tokens: Iterable[bytes], *, now: float | None = None
) -> bytes | None:
    """The SHA-256 of the configured token that signed this cookie, or None: its expiry
    must be ahead, and no further ahead than a signed session lasts."""
    if not session_id.startswith(SIGNED_PREFIX):
        return None
    expiry, _, mac = session_id.removeprefix(SIGNED_PREFIX).partition(".")
    at = now or time.time()
    if not expiry.isdigit() or len(expiry) > 12:
        return None
    if not at < int(expiry) <= at + SIGNED_LIFETIME.total_seconds() + _SKEW_S:
        return None
    found = None
    for token in tokens:  # every one, so the timing says nothing about which
        if hmac.compare_digest(_mac(signing_key(token), int(expiry)), mac):
            found = hashlib.sha256(token).digest()
    return found


async def end_session(conn: Connection, session_id: str) -> None:
    if session_id:
        await conn.execute(
            "DELETE FROM dashboard_sessions WHERE id_sha256 = $1", digest(session_id)
        )
