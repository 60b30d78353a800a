"""Charger passwords: generated, stored as salted hashes, checked at the upgrade.

OCPP security profiles 1 and 2 authenticate a charger with HTTP Basic (user = the charger
id) on the WebSocket upgrade. The password is printed once by ``chargers add``; only its
hash is kept, so a leaked database does not open the chargers' accounts. The passwords are
never chosen by people: each is 144 random bits, which no guessing reaches, so a salted
SHA-256 protects them as well as a deliberately slow hash would, and a reconnect storm of
thousands of chargers after a restart costs microseconds each instead of seconds of CPU.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

_PREFIX = "sha256"


def generate() -> str:
    """A new password: 24 URL-safe characters (144 bits), within OCPP's 16-40 characters."""
    return secrets.token_urlsafe(18)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    return f"{_PREFIX}${salt.hex()}${_digest(password, salt)}"


def _digest(password: str, salt: bytes) -> str:
    return hashlib.sha256(salt + password.encode()).hexdigest()


def verify(password: str, stored: str) -> bool:
    """Whether ``password`` matches the ``stored`` hash (constant time)."""
    try:
        prefix, salt, digest = stored.split("$")
        got = _digest(password, bytes.fromhex(salt))
    except ValueError:
        return False
    return prefix == _PREFIX and hmac.compare_digest(got, digest)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic ...`` header, else None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def basic_header(user: str, password: str) -> str:
    """The ``Authorization`` header value a charger sends (tests, ``simulate --ocpp``)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
