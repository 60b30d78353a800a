"""``SOURCES_FILE``: what each ``[[source]]`` says, checked once at start.

A file, or a folder whose ``*.toml`` files are read in name order. Each source names the
MQTT topics it takes (``{name}`` captures one level), the stream and device id its
readings get, where the timestamp and each field are in the payload (JMESPath), and the
energy unit. Everything that can be checked before a message arrives is checked here, so a
bad file stops ``run`` and ``check`` with one line naming the source and the key:
the paths compile, the units are known, a source timed ``receive`` maps no interval energy
(a redelivered message would book it twice), no two sources (nor a source and the native
topics) can match one topic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import jmespath  # type: ignore[import-untyped]
import jmespath.exceptions  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from collector.errors import UsageError
from collector.ingest.streams import STREAMS, StreamName
from collector.settings import known_zone
from collector.sources.mappings.topic import TopicPattern
from collector.sources.mappings.units import ENERGY_UNITS
from collector.tomlfile import array_of_tables, read_toml

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
TimestampFormat = Literal["epoch_s", "epoch_ms", "iso", "iso_local", "receive"]
#: What a sender writes for "no value" (Home Assistant, Zigbee2MQTT, Tasmota).
DEFAULT_IGNORE = ("unavailable", "unknown", "")


class SourcesError(UsageError):
    """The sources file cannot be used; the message is one line naming the source and key."""


def _path(value: str) -> str:
    try:
        jmespath.compile(value)
    except jmespath.exceptions.JMESPathError as exc:
        raise ValueError(f"not a JMESPath expression ({str(exc).splitlines()[0]})") from None
    return value


Path_ = Annotated[str, Field(min_length=1, max_length=500)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class When(_Strict):
    """Only messages whose ``path`` equals ``equals`` (several shapes on one topic)."""

    path: Path_
    equals: str | int | float | bool

    _check = field_validator("path")(_path)


class TimestampSpec(_Strict):
    path: Path_ | None = None
    format: TimestampFormat
    tz: str | None = None

    _check = field_validator("path")(lambda v: v if v is None else _path(v))

    @field_validator("tz")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return value if value is None else known_zone(value)

    @model_validator(mode="after")
    def _coherent(self) -> TimestampSpec:
        if self.format == "receive":
            if self.path is not None:
                raise ValueError("format receive takes no path (the time the message arrived)")
        elif self.path is None:
            raise ValueError(f"format {self.format} needs the path of the timestamp")
        if self.format == "iso_local" and self.tz is None:
            raise ValueError("format iso_local needs tz, the zone of the device's clock")
        if self.format != "iso_local" and self.tz is not None:
            raise ValueError("tz is only for format iso_local")
        return self


class FieldSpec(_Strict):
    target: str
    path: Path_
    unit: str | None = None

    _check = field_validator("path")(_path)


class SourceSpec(_Strict):
    """One ``[[source]]``."""

    name: Name
    topic: Annotated[str, Field(min_length=1, max_length=500)]
    kind: StreamName
    device_id: Annotated[str, Field(min_length=1, max_length=200)]
    when: When | None = None
    timestamp: TimestampSpec
    payload: Literal["json", "scalar"] = "json"
    retained: Literal["ignore", "accept"] = "ignore"
    ignore_values: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE))
    fields: Annotated[list[FieldSpec], Field(min_length=1, max_length=50)]

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        TopicPattern(value)  # raises ValueError with the reason
        return value

    @model_validator(mode="after")
    def _coherent(self) -> SourceSpec:  # noqa: PLR0912 - one check after the other
        stream = STREAMS[self.kind]
        energy = {stream.energy.field, stream.register_field}
        allowed = [*energy, *(m.field for m in stream.measures if m.optional)]
        targets = [f.target for f in self.fields]
        for i, f in enumerate(self.fields):
            where = f"fields[{i}]"
            if f.target not in allowed:
                raise ValueError(
                    f"{where}.target: {f.target!r} is not a {self.kind} field "
                    f"({', '.join(allowed)})"
                )
            if f.target in energy:
                if f.unit is None:
                    raise ValueError(
                        f"{where}.unit: energy needs its unit ({', '.join(ENERGY_UNITS)})"
                    )
                if f.unit not in ENERGY_UNITS:
                    raise ValueError(
                        f"{where}.unit: {f.unit!r} is not one of {', '.join(ENERGY_UNITS)}"
                    )
            elif f.unit is not None:
                raise ValueError(f"{where}.unit: only energy fields take a unit")
            if self.payload == "scalar" and f.path != "@":
                raise ValueError(f"{where}.path: a scalar payload is the value itself: path '@'")
        if len(set(targets)) != len(targets):
            raise ValueError("fields: a target is mapped twice")
        if not energy & set(targets):
            raise ValueError(
                f"fields: no energy ({' or '.join(sorted(energy))}): a reading needs one"
            )
        if energy <= set(targets):
            raise ValueError(f"fields: {' and '.join(sorted(energy))} both; map one of them")
        if self.timestamp.format == "receive" and stream.energy.field in targets:
            raise ValueError(
                f"timestamp: a source timed receive may only map the register "
                f"({stream.register_field}): each redelivery of a message would be a new "
                f"reading, and its {stream.energy.field} would be booked again"
            )
        if self.payload == "scalar" and (self.when or self.timestamp.path):
            raise ValueError("a scalar payload has no paths for when or timestamp")
        names = set(TopicPattern(self.topic).names)
        for name in re.findall(r"{([^{}]*)}", self.device_id):
            if name not in names:
                raise ValueError(
                    f"device_id: {{{name}}} is not a level of the topic ({self.topic})"
                )
        return self


def _message(exc: ValidationError) -> str:
    """The first error as ``key: reason`` (``fields[0].unit: ...``); a check of the whole
    source names its key in the reason itself."""
    err = exc.errors()[0]
    where = ""
    for part in err["loc"]:
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def parse_sources(document: dict[str, Any], *, where: str) -> list[SourceSpec]:
    tables = array_of_tables(document, "source", where, SourcesError, "sources")
    out = []
    for i, table in enumerate(tables):
        name = table.get("name") if isinstance(table.get("name"), str) else f"#{i + 1}"
        try:
            out.append(SourceSpec.model_validate(table))
        except ValidationError as exc:
            raise SourcesError(f"{where}: source {name!r}: {_message(exc)}") from None
    return out


def load_sources(path: str, native: Sequence[TopicPattern] = ()) -> tuple[SourceSpec, ...]:
    """Every source of ``SOURCES_FILE`` (a file, or a folder's ``*.toml`` in name order),
    checked against each other and against the ``native`` topic patterns."""
    root = Path(path)
    if root.is_dir():
        files = sorted(root.glob("*.toml"))
        if not files:
            raise SourcesError(f"SOURCES_FILE {path}: a folder without *.toml files")
    else:
        files = [root]
    specs: list[tuple[str, SourceSpec]] = []
    for file in files:
        where = f"SOURCES_FILE {file}"
        specs += [
            (where, s)
            for s in parse_sources(read_toml(str(file), where, SourcesError), where=where)
        ]
    if not specs:
        raise SourcesError(f"SOURCES_FILE {path}: no [[source]]; leave SOURCES_FILE unset instead")
    seen: dict[str, str] = {}
    patterns: list[tuple[str, TopicPattern]] = [("the native topics", p) for p in native]
    for where, spec in specs:
        if spec.name in seen:
            raise SourcesError(f"{where}: source {spec.name!r}: name: also in {seen[spec.name]}")
        seen[spec.name] = where
        pattern = TopicPattern(spec.topic)
        for other, theirs in patterns:
            if pattern.overlaps(theirs):
                raise SourcesError(
                    f"{where}: source {spec.name!r}: topic: {spec.topic} can match the same "
                    f"topics as {other} ({theirs.text}); a message must have one source"
                )
        patterns.append((f"source {spec.name!r}", pattern))
    return tuple(spec for _, spec in specs)
