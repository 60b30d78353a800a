"""HTTP ingest as a source: the same sink, buffer and writer as MQTT.

The API reads a request body and decodes it into items (``decode``: one reading, a JSON
array or NDJSON); :meth:`HttpIngest.submit` hands them to the sink as one submission and
returns once the writer has committed it, so the HTTP response can say what was stored.

Memory stays bounded as for MQTT: a request's chunk goes into the buffer when there is room;
when there is none, requests may wait for room only while all that waits holds at most
``INGEST_MAX_WAITING`` items. Past that a request is answered 503 at once, so a database
outage cannot pile up parsed requests (the clients retry; nothing was stored). And only
``PARSING_SLOTS`` requests read, parse and validate their bodies at a time (:meth:`slot`):
the others wait with their bodies unread, in the socket, where they cost nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from collector.ingest.readings import Reason
from collector.ingest.sink import Item, Sink, SinkClosed, Submission
from collector.metrics import Metrics
from collector.sources.base import SourceHealth

#: Requests that hold a parsed body at once. Parsing is CPU-bound on the one event loop, so
#: more would not go faster; they would only hold more bodies in memory.
PARSING_SLOTS = 4


class Slot:
    """A parsing slot; released once (when the request's chunk is queued, or at the end)."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._semaphore.release()


class IngestUnavailable(Exception):
    """The readings could not be committed now; the message says why and what to do."""


@dataclass(slots=True)
class IngestResult:
    accepted: int = 0
    #: (index in the request, reason, detail)
    rejected: list[tuple[int, Reason, str]] = field(default_factory=list)


class HttpIngest:
    """Hands HTTP items to the sink and waits for their commit; the API drives it."""

    name = "http"

    def __init__(
        self,
        *,
        sink: Sink,
        metrics: Metrics,
        timeout_s: float,
        max_waiting: int = 20_000,
    ) -> None:
        self._sink = sink
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._max_waiting = max_waiting
        self._slots = asyncio.Semaphore(PARSING_SLOTS)
        #: Items of the requests waiting for room in the buffer now.
        self.waiting = 0
        self._released = asyncio.Event()

    async def run(self) -> None:
        """Requests come through the API's server, not a loop of its own: wait for the end."""
        await self._released.wait()

    def stop_taking(self) -> None:
        """Nothing to do: once the buffer is closed, a request is answered 503."""

    def release(self) -> None:
        self._released.set()

    def health(self) -> SourceHealth:
        return SourceHealth(None)

    async def slot(self) -> Slot:
        """Wait (at most the ingest timeout) for a turn to read and parse a body."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise IngestUnavailable(
                f"the collector is busy (no turn to read the request within "
                f"{self._timeout_s:g} s); nothing was stored, try again later"
            ) from None
        return Slot(self._slots)

    @property
    def max_items(self) -> int:
        """The most items one request may carry: what the buffer can hold at all."""
        return self._sink.capacity

    async def submit(
        self, items: Sequence[Item], *, queued: Callable[[], object] | None = None
    ) -> IngestResult:
        """Validate ``items``, commit them (dead letters included) and report per item.

        ``queued`` is called once the chunk is in the buffer (the request's parsing slot can
        go). Raises ``IngestUnavailable`` when the collector is stopping, the buffer stays
        full, or the commit does not happen within the timeout (the readings then stay
        queued and are stored later; sending them again is safe, duplicates are absorbed).
        """
        submission = self._sink.classify(items)
        result = IngestResult(
            accepted=submission.accepted,
            rejected=[(index, r.reason, r.detail) for index, r in submission.refused],
        )
        self._metrics.received.labels("http").inc(len(items))

        loop = asyncio.get_running_loop()
        committed: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            if not committed.done():
                committed.set_result(None)

        def abandoned() -> None:
            if not committed.done():
                committed.set_exception(
                    IngestUnavailable("the collector stopped before the readings were stored")
                )

        in_buffer = False
        try:
            async with asyncio.timeout(self._timeout_s):
                in_buffer = self._sink.try_admit(submission, on_commit=done, on_abandon=abandoned)
                if not in_buffer:
                    await self._wait_for_room(submission, done, abandoned)
                    in_buffer = True
                if queued is not None:
                    queued()
                await asyncio.shield(committed)
        except SinkClosed:
            raise IngestUnavailable("the collector is shutting down; nothing was stored") from None
        except TimeoutError:
            if not in_buffer:
                raise IngestUnavailable(
                    f"the collector is busy (its buffer stayed full for {self._timeout_s:g} s); "
                    "nothing was stored, try again later"
                ) from None
            raise IngestUnavailable(
                f"accepted but not stored within {self._timeout_s:g} s (the database is "
                "unavailable or slow); the readings are queued and will be stored. Sending "
                "them again is safe: duplicates are absorbed"
            ) from None
        return result

    async def _wait_for_room(
        self,
        submission: Submission,
        done: Callable[[], object],
        abandoned: Callable[[], object],
    ) -> None:
        size = submission.size
        if self.waiting + size > self._max_waiting:
            raise IngestUnavailable(
                "the collector is busy (its buffer is full and other requests already wait "
                "for room); nothing was stored, try again later"
            )
        self.waiting += size
        try:
            await self._sink.admit(submission, on_commit=done, on_abandon=abandoned)
        finally:
            self.waiting -= size
