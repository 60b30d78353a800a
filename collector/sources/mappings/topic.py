"""A source's topic: MQTT levels where ``{name}`` captures one level.

``tele/{device}/SENSOR`` subscribes to ``tele/+/SENSOR`` and, for a message on
``tele/plug-7/SENSOR``, captures ``device = plug-7``. One pattern is both the subscription
and the matcher, so they cannot disagree (Telegraf's ``topic_parsing`` and ThingsBoard's
regular expressions let them).
"""

from __future__ import annotations

import re

_CAPTURE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]{0,31})\}$")


class TopicPattern:
    """Levels that are literal or ``{name}`` captures of one level."""

    __slots__ = ("_literals", "_size", "captures", "names", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        levels = text.split("/")
        self._size = len(levels)
        self._literals: list[tuple[int, str]] = []
        self.captures: list[tuple[int, str]] = []
        for i, level in enumerate(levels):
            capture = _CAPTURE.match(level)
            if capture:
                if capture[1] in (n for _, n in self.captures):
                    raise ValueError(f"{{{capture[1]}}} appears twice in {text!r}")
                self.captures.append((i, capture[1]))
            elif not level:
                raise ValueError(f"an empty level in {text!r}")
            elif any(c in level for c in "+#{}"):
                raise ValueError(
                    f"level {level!r} of {text!r}: write a captured level as {{name}}, "
                    "the whole level (no + or #)"
                )
            else:
                self._literals.append((i, level))
        self.names = tuple(n for _, n in self.captures)

    def filter(self) -> str:
        """The MQTT subscription: each capture a ``+``."""
        levels = self.text.split("/")
        for i, _ in self.captures:
            levels[i] = "+"
        return "/".join(levels)

    def match(self, topic: str) -> dict[str, str] | None:
        """The captured levels of ``topic``, or None if it is not one of these topics."""
        levels = topic.split("/")
        if len(levels) != self._size:
            return None
        for i, literal in self._literals:
            if levels[i] != literal:
                return None
        out = {}
        for i, name in self.captures:
            if not levels[i]:
                return None
            out[name] = levels[i]
        return out

    def overlaps(self, other: TopicPattern) -> bool:
        """Could one topic match both?"""
        if self._size != other._size:
            return False
        mine, theirs = dict(self._literals), dict(other._literals)
        return all(mine[i] == theirs[i] for i in mine.keys() & theirs.keys())
