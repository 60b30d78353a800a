"""The one base class for errors an operator must act on.

Every command (``energy-collector run``, ``migrate``, ``import``, ...) lets these rise to
``collector.cli.main``, which prints the message as one line and exits with the error's
``exit_code``. Foreign errors (asyncpg, paho, OSError) are converted where they happen, with
a message that says what failed and what to do, never a traceback.
"""

from __future__ import annotations


class CollectorError(Exception):
    """Something the operator must fix or know about; ``str()`` is one line for them."""

    #: The process's exit status when this ends a command.
    exit_code = 1


class UsageError(CollectorError):
    """A setting or an argument is invalid (exit 2, like argparse)."""

    exit_code = 2
