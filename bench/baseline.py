"""Another commit's collector, runnable beside this one: for "before/after" in one run.

``--baseline CHECKOUT`` (a ``git worktree add /tmp/before <commit>``) must run *that*
checkout's code with *its* schema. Putting the checkout on ``PYTHONPATH`` is not enough: the
editable install maps the ``collector.sql`` package to this repository's ``sql/``, so an old
collector would apply today's migrations. :func:`overlay` copies the checkout's packages into
a directory of their own with its ``sql/`` as ``collector/sql``; run the collector with
``PYTHONPATH`` set to it. The checkout itself is not touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PACKAGES = ("collector", "api")


def overlay(checkout: Path, into: Path) -> Path:
    """Copy ``checkout``'s packages (and its SQL as ``collector.sql``) under ``into``."""
    checkout = checkout.resolve()
    if not (checkout / "collector" / "__init__.py").is_file():
        raise SystemExit(f"--baseline {checkout}: not a checkout of this project (no collector/)")
    into.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        if (checkout / package).is_dir():
            shutil.copytree(checkout / package, into / package, ignore=ignore, dirs_exist_ok=True)
    sql = checkout / "sql"
    if sql.is_dir() and not (checkout / "collector" / "sql").exists():
        shutil.copytree(sql, into / "collector" / "sql", ignore=ignore, dirs_exist_ok=True)
    return into


def parse(spec: str) -> tuple[str, Path]:
    """``LABEL=PATH`` or ``PATH`` (labelled by its directory name)."""
    label, sep, path = spec.partition("=")
    if not sep:
        label, path = Path(spec).name, spec
    return label, Path(path)
