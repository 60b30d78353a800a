"""The sink: every source's one way into the pipeline.

A source decodes what it receives into :class:`Item` s (a stream and a payload, or the
values a mapping took out of one, or the problem that makes it no reading) and hands them
to the sink, with what to do once they are committed (``on_commit``: send the PUBACKs,
answer the HTTP request, send an OCPP CALLRESULT) or given up (``on_abandon``). The sink
validates each item (``validation``), groups the readings by stream, and admits them into
the bounded buffer as one chunk; the writer commits them and runs the callback. The importer
uses the same classification (:func:`classify`) without the buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from collector.ingest.buffer import BufferClosed, Chunk, IngestBuffer
from collector.ingest.readings import Reading, Reason, Rejection
from collector.ingest.streams import Stream
from collector.ingest.validation import ReadingValidator


class SinkClosed(Exception):
    """The collector is shutting down and takes no more input."""


class Item:
    """One reading as a decoder made it, not validated yet.

    ``payload`` is the message as it arrived: validated as the native JSON contract, or,
    when a decoder already took ``values`` out of it, kept for a dead letter. ``source``
    says where it came from (a topic, ``http:<path>``, ``import:<file>:<line>``: the dead
    letter's ``topic``). ``expected_id``: the device its address names. ``problem``: why it
    cannot be a reading at all (then ``stream`` may be None). ``origin``: the payload
    mapping that made it, named in its rejection's detail. One is made per message: a
    plain slotted class, the cheapest object to make.
    """

    __slots__ = ("expected_id", "origin", "payload", "problem", "source", "stream", "values")

    def __init__(
        self,
        stream: Stream | None,
        payload: bytes,
        source: str,
        expected_id: str | None = None,
        *,
        values: Mapping[str, object] | None = None,
        problem: tuple[Reason, str] | None = None,
        origin: str | None = None,
    ) -> None:
        self.stream = stream
        self.origin = origin
        self.payload = payload
        self.source = source
        self.expected_id = expected_id
        self.values = values
        self.problem = problem

    def __repr__(self) -> str:
        stream = self.stream.name if self.stream else None
        return f"Item({stream}, {self.source!r}, {self.payload[:60]!r}, problem={self.problem})"


@dataclass(slots=True)
class Submission:
    """Items validated and grouped, ready to be admitted as one chunk."""

    #: Readings by stream name.
    readings: dict[str, list[Reading]]
    rejected: list[Rejection]
    received_at: datetime
    #: (index of the item, its rejection), in item order.
    refused: list[tuple[int, Rejection]] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return sum(map(len, self.readings.values()))

    @property
    def size(self) -> int:
        return self.accepted + len(self.rejected)


def classify(
    validator: ReadingValidator, items: Sequence[Item], received_at: datetime | None = None
) -> Submission:
    """Validate ``items`` and group them: readings by stream, rejections in order (pure)."""
    received_at = received_at or datetime.now(UTC)
    horizon = validator.horizon(received_at)
    validate = validator.validate
    readings: dict[str, list[Reading]] = {}
    rejected: list[Rejection] = []
    refused: list[tuple[int, Rejection]] = []
    for index, item in enumerate(items):
        stream = item.stream
        outcome: Reading | Rejection
        if item.problem is not None or stream is None:
            reason, detail = item.problem or (Reason.UNKNOWN_KIND, "no stream for this item")
            payload = item.payload
            limit = validator.max_payload_bytes
            outcome = Rejection(item.source, payload[:limit], reason, detail, size=len(payload))
        elif item.values is not None:
            outcome = validator.validate_fields(
                stream,
                item.values,
                source=item.source,
                payload=item.payload,
                expected_id=item.expected_id,
                horizon=horizon,
            )
            if item.origin is not None and isinstance(outcome, Rejection):
                outcome = replace(outcome, detail=f"source {item.origin}: {outcome.detail}")
        else:
            outcome = validate(stream, item.payload, item.source, item.expected_id, horizon)
        if isinstance(outcome, Rejection):
            rejected.append(outcome)
            refused.append((index, outcome))
        else:
            assert stream is not None
            group = readings.get(stream.name)
            if group is None:
                readings[stream.name] = [outcome]
            else:
                group.append(outcome)
    return Submission(readings, rejected, received_at, refused)


class Sink:
    """Validates what sources hand in and admits it into the buffer, acknowledged after
    the commit."""

    def __init__(self, *, buffer: IngestBuffer, validator: ReadingValidator) -> None:
        self._buffer = buffer
        self.validator = validator

    @property
    def capacity(self) -> int:
        """The most items one submission may hold: what the buffer holds at all. Sources
        cut what they submit to fit (MQTT), or refuse more (HTTP)."""
        return self._buffer.capacity

    @property
    def closed(self) -> bool:
        return self._buffer.closed

    def classify(self, items: Sequence[Item], received_at: datetime | None = None) -> Submission:
        return classify(self.validator, items, received_at)

    def try_admit(
        self,
        submission: Submission,
        *,
        on_commit: Callable[[], object] | None = None,
        on_abandon: Callable[[], object] | None = None,
    ) -> bool:
        """Admit ``submission`` if there is room now (and nobody waits for room)."""
        try:
            return self._buffer.try_put(self._chunk(submission, on_commit, on_abandon))
        except BufferClosed:
            raise SinkClosed("the collector is shutting down") from None

    async def admit(
        self,
        submission: Submission,
        *,
        on_commit: Callable[[], object] | None = None,
        on_abandon: Callable[[], object] | None = None,
    ) -> None:
        """Admit ``submission``, waiting (in order) while the buffer is full."""
        try:
            await self._buffer.put(self._chunk(submission, on_commit, on_abandon))
        except BufferClosed:
            raise SinkClosed("the collector is shutting down") from None

    async def submit(
        self,
        items: Sequence[Item],
        *,
        on_commit: Callable[[], object] | None = None,
        on_abandon: Callable[[], object] | None = None,
    ) -> Submission:
        """Validate ``items`` and admit them, waiting for room (what a source that can stop
        reading does: the broker keeps the rest meanwhile)."""
        submission = self.classify(items)
        await self.admit(submission, on_commit=on_commit, on_abandon=on_abandon)
        return submission

    @staticmethod
    def _chunk(
        submission: Submission,
        on_commit: Callable[[], object] | None,
        on_abandon: Callable[[], object] | None,
    ) -> Chunk:
        return Chunk(
            submission.readings,
            submission.rejected,
            submission.received_at,
            on_commit=on_commit,
            on_abandon=on_abandon,
        )
