"""OCPP-J framing: a WebSocket text frame as a CALL, CALLRESULT or CALLERROR, or why not.

The ``ocpp`` library parses frames too, but it only logs one that is not JSON or not OCPP
and answers nothing; the collector must dead-letter such a frame with its raw text and, where
the spec owes an answer (a CALL whose id can be read), send a CALLERROR. Relay mode reads
every frame of both directions with this alone (the library is not in that path).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CALL, CALLRESULT, CALLERROR = 2, 3, 4


@dataclass(frozen=True, slots=True)
class Frame:
    """One OCPP-J message: ``[2, id, action, payload]``, ``[3, id, payload]`` or
    ``[4, id, code, description, details]`` (``action`` None for the last two)."""

    kind: int
    unique_id: str
    action: str | None
    payload: Any


class FrameError(ValueError):
    """Not an OCPP-J message. ``unique_id``: the message id when one could be read (a
    CALLERROR is owed then), ``code``: the OCPP error code to answer with."""

    def __init__(self, message: str, *, unique_id: str | None = None, code: str) -> None:
        super().__init__(message)
        self.unique_id = unique_id
        self.code = code


def parse(text: str | bytes) -> Frame:
    """The frame ``text`` holds; raises :class:`FrameError` saying what is wrong."""
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"not JSON: {exc}", code="RpcFrameworkError") from None
    if not isinstance(msg, list) or len(msg) < 3 or msg[0] not in (CALL, CALLRESULT, CALLERROR):
        raise FrameError(
            "not an OCPP-J message: expected [2, id, action, payload], [3, id, payload] or "
            "[4, id, code, description, details]",
            code="RpcFrameworkError",
        )
    kind, unique_id = msg[0], msg[1]
    if not isinstance(unique_id, str):
        raise FrameError("the message id is not a string", code="RpcFrameworkError")
    if kind == CALL:
        if len(msg) != 4 or not isinstance(msg[2], str):
            raise FrameError(
                "a CALL is [2, id, action, payload]", unique_id=unique_id, code="ProtocolError"
            )
        if not isinstance(msg[3], dict):
            raise FrameError(
                "a CALL's payload is a JSON object", unique_id=unique_id, code="FormatViolation"
            )
        return Frame(CALL, unique_id, msg[2], msg[3])
    if kind == CALLRESULT:
        return Frame(CALLRESULT, unique_id, None, msg[2])
    return Frame(CALLERROR, unique_id, None, msg[2:])


def call_error(unique_id: str, code: str, description: str) -> str:
    """A CALLERROR frame."""
    return json.dumps([CALLERROR, unique_id, code, description[:255], {}])
