"""Optional bearer tokens: one set may read, another may ingest.

A role is protected only when tokens for it are configured (``READ_TOKENS``,
``INGEST_TOKENS``); with none, the API is open, which is meant for localhost.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from api.endpoints import Role
from api.problems import ProblemError


class TokenAuth:
    def __init__(self, *, read: tuple[str, ...], ingest: tuple[str, ...]) -> None:
        self._tokens: dict[Role, tuple[bytes, ...]] = {
            "read": tuple(t.encode() for t in read),
            "ingest": tuple(t.encode() for t in ingest),
        }

    def enabled(self, role: Role) -> bool:
        return bool(self._tokens[role])

    def accepts(self, role: Role, token: str) -> bool:
        """Whether ``token`` may act in ``role`` (always, when the role is not protected)."""
        if not self._tokens[role]:
            return True
        return bool(token) and _matches(token.encode(), self._tokens[role])

    def accepts_digest(self, role: Role, token_sha256: bytes | None) -> bool:
        """Whether a token known only by its SHA-256 (a dashboard session) may still act in
        ``role``: it must be one of the tokens configured now."""
        if token_sha256 is None:
            return False
        return _matches(token_sha256, tuple(hashlib.sha256(t).digest() for t in self._tokens[role]))

    def tokens(self, role: Role) -> tuple[bytes, ...]:
        """The tokens of ``role`` (signed dashboard sessions derive their keys from them)."""
        return self._tokens[role]

    def allows(self, request: Request, role: Role) -> bool:
        """Whether the request may act in ``role`` (no error: for answers that only leave
        details out for others)."""
        try:
            self.check(request, role)
        except ProblemError:
            return False
        return True

    def check(self, request: Request, role: Role | None) -> None:
        """Raise a 401/403 problem unless the request may act in ``role``."""
        if role is None or not self._tokens[role]:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="energy-collector"'}
        if scheme.lower() != "bearer" or not token.strip():
            raise ProblemError(
                401, f"a bearer token that may {role} is required", headers=challenge
            )
        given = token.strip().encode()
        if _matches(given, self._tokens[role]):
            return
        other: Role = "ingest" if role == "read" else "read"
        if _matches(given, self._tokens[other]):
            raise ProblemError(403, f"this token may not {role}")
        raise ProblemError(401, "the bearer token is not valid", headers=challenge)


def _matches(given: bytes, tokens: tuple[bytes, ...]) -> bool:
    # compare_digest against every token, so the timing says nothing about which matched
    matched = False
    for candidate in tokens:
        matched |= hmac.compare_digest(given, candidate)
    return matched
