"""Capped exponential backoff with jitter, for reconnecting to the broker and the database."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, each randomised by +-25 %.

    The jitter keeps a fleet of collectors from retrying in lock step after an outage.
    """

    def __init__(self, initial: float, maximum: float, *, rng: random.Random | None = None):
        self.initial = initial
        self.maximum = maximum
        self._next = initial
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security

    def next(self) -> float:
        """The delay to wait now; the following one will be longer (up to the cap)."""
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay * self._rng.uniform(0.75, 1.25)

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self._next = self.initial
