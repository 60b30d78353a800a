"""Golden decoder cases: ``tests/decoders/<decoder>/<case>/`` walked by one test.

Each case folder holds the ``topic`` a message arrived on, its payload (``payload.json``, or
``payload`` for bytes that are not JSON), and ``expected.json``: the readings it becomes
(``{"readings": [{"stream": ..., <fields>}]}``) or the reasons it is rejected
(``{"rejected": [{"reason": ..., "detail_contains": ...}]}``), or why a payload mapping
ignores it (``{"ignored": "no_energy"}``). An optional ``meta.json`` sets the decoder's
options (``prefix``; ``retained``: the broker sent it as a retained message). The folders
besides ``native`` are the shipped mappings, ``deploy/sources/<folder>.toml``, with
payloads in the devices' documented shapes. The message goes through the decoder and the
sink's classification, as a received message does; the clock is fixed at ``NOW``. Adding a
case is adding a folder (Telegraf's ``testdata/<case>/`` pattern).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from collector.ingest.sink import Item, classify
from collector.ingest.validation import ReadingValidator
from collector.sources.base import Decoder
from collector.sources.mappings.decoder import Ignored, Mappings
from collector.sources.mappings.load import native_patterns
from collector.sources.mappings.preview import rendered
from collector.sources.mappings.spec import load_sources
from collector.sources.mqtt.topics import NativeTopics

CASES = Path(__file__).parent / "decoders"
NOW = datetime(2026, 2, 9, 12, 0, tzinfo=UTC)


SOURCES = Path(__file__).parent.parent / "deploy" / "sources"


def native(meta: dict[str, Any]) -> Decoder:
    return NativeTopics(meta.get("prefix", ""))


class MappedDecoder:
    """A shipped mapping file, as the MQTT source uses it (the clock fixed at ``NOW``)."""

    def __init__(self, file: Path, meta: dict[str, Any]) -> None:
        self.mappings = Mappings(load_sources(str(file), native_patterns("")))
        self.retained = bool(meta.get("retained", False))
        self.ignored: str | None = None

    def decode(self, address: str, payload: bytes) -> Sequence[Item]:
        found = self.mappings.route(address)
        if found is None:
            return (NativeTopics().item(address, payload),)
        mapping, captures = found
        made = mapping.decode(address, captures, payload, retained=self.retained, received_at=NOW)
        if isinstance(made, Ignored):
            self.ignored = made.why
            return ()
        return (made,)


#: Each folder of tests/decoders/ and the decoder its cases are for.
DECODERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "native": native,
    **{f.stem: partial(MappedDecoder, f) for f in sorted(SOURCES.glob("*.toml"))},
}


def cases() -> list[Path]:
    return sorted(p for p in CASES.glob("*/*") if p.is_dir())


def test_every_decoder_folder_has_a_decoder_and_cases():
    folders = {p.name for p in CASES.iterdir() if p.is_dir()}
    assert folders == set(DECODERS)
    assert all(any((CASES / f).iterdir()) for f in folders)


@pytest.mark.parametrize("case", cases(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_golden_case(case: Path):
    meta = json.loads((case / "meta.json").read_text()) if (case / "meta.json").exists() else {}
    decoder = DECODERS[case.parent.name](meta)
    topic = (case / "topic").read_text().strip()
    raw = case / "payload"
    payload = raw.read_bytes() if raw.exists() else (case / "payload.json").read_bytes().strip()
    expected = json.loads((case / "expected.json").read_text())

    items = decoder.decode(topic, payload)
    validator = ReadingValidator(max_payload_bytes=4096, max_future_skew_s=300)
    submission = classify(validator, items, NOW)

    assert getattr(decoder, "ignored", None) == expected.get("ignored")
    readings = [rendered(r) for group in submission.readings.values() for r in group]
    assert readings == expected.get("readings", [])
    want = expected.get("rejected", [])
    assert [r.reason.value for r in submission.rejected] == [w["reason"] for w in want]
    for rejection, w in zip(submission.rejected, want, strict=True):
        assert rejection.detail
        assert rejection.source == topic
        assert w.get("detail_contains", "") in rejection.detail, rejection.detail
