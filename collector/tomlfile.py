"""Reading an operator's TOML file (alert rules, payload mappings): one-line errors.

What every such file gets: a size bound (tomllib keeps it all in memory), UTF-8 only (a
byte order mark is fine; UTF-16, as some editors save, is refused with a hint), and a
document nested too deeply for the parser is an error, not a crash.
"""

from __future__ import annotations

import tomllib
from typing import Any

#: The largest file read (a few thousand entries take well under this).
MAX_FILE_BYTES = 4 * 1024 * 1024


def read_toml(path: str, where: str, error: type[Exception]) -> dict[str, Any]:
    """The parsed document at ``path``; ``error(message)`` naming ``where`` if it cannot be."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise error(f"{where}: cannot be read ({exc.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise error(f"{where}: larger than {MAX_FILE_BYTES // 1024 // 1024} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = " (UTF-16? save it as UTF-8)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise error(
            f"{where}: not UTF-8 text (byte {exc.start}){hint}; TOML files are UTF-8"
        ) from None
    try:
        return tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{where}: not valid TOML ({exc})") from None
    except RecursionError:
        raise error(f"{where}: not valid TOML (nested too deeply)") from None


def array_of_tables(
    document: dict[str, Any], key: str, where: str, error: type[Exception], plural: str
) -> list[dict[str, Any]]:
    """The ``[[key]]`` tables of a parsed file: anything else at the top, or ``key`` not an
    array of tables, is ``error`` naming ``where`` (``plural``: what the tables are)."""
    unknown = sorted(set(document) - {key})
    if unknown:
        raise error(f"{where}: unknown table {unknown[0]!r} ({plural} are [[{key}]] tables)")
    tables = document.get(key, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise error(f"{where}: '{key}' must be an array of tables ([[{key}]])")
    return tables
