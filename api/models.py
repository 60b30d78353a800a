"""Request and response shapes of the API (camelCase, as in the device payloads)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer

from api.policy import Verdict
from collector.ingest.readings import DEVICE_ID_PATTERN, Timestamp
from collector.ingest.streams import StreamName

DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, max_length=64)]
Status = Verdict
BUCKET_WIDTHS = {
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "30m": timedelta(minutes=30),
    "1h": timedelta(hours=1),
    "3h": timedelta(hours=3),
    "6h": timedelta(hours=6),
    "12h": timedelta(hours=12),
    "1d": timedelta(days=1),
}


#: Energy leaves the API rounded to 0.000001 kWh (1 mWh, the finest unit a device reports
#: in): sums and differences of floats carry noise below it (6.999999999912632e-05 for
#: 0.00007), which nobody should have to bill or reconcile.
KWH_DECIMALS = 6


def _kwh(value: float) -> float:
    return round(value, KWH_DECIMALS)


Kwh = Annotated[float, PlainSerializer(_kwh, return_type=float)]


class Out(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- query parameters ---------------------------------------------------------------------


class WindowQuery(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    from_: Timestamp | None = Field(
        None, alias="from", description="window start (ISO 8601 with offset); default: to - 24 h"
    )
    to: Timestamp | None = Field(
        None, description="window end, exclusive (ISO 8601 with offset); default: now"
    )


class SeriesQuery(WindowQuery):
    bucket: Literal["5m", "15m", "30m", "1h", "3h", "6h", "12h", "1d"] = Field(
        "1h", description="bucket width"
    )


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: int = Field(100, ge=1, le=1000, description="items per page (at most 1000)")
    cursor: DeviceId | None = Field(
        None, description="the nextCursor of the previous page: items after this device id"
    )
    silentForMinutes: int | None = Field(
        None,
        ge=0,
        le=525_600,
        description="only devices whose latest reading is older than this many minutes",
    )


class VehiclePageQuery(PageQuery):
    socBelow: float | None = Field(
        None,
        ge=0,
        le=100,
        description="only vehicles whose latest state of charge is below this (%)",
    )


# --- status --------------------------------------------------------------------------------


class MeterStatus(Out):
    meterId: str
    timestamp: datetime = Field(description="the reading's own timestamp")
    kwhConsumedAc: Kwh = Field(
        description="the energy of the interval the reading ends (booked from the register "
        "for a register reading)"
    )
    kwhRegisterAc: Kwh | None = Field(None, description="the register, for a register reading")
    registerQuality: str | None = Field(
        None,
        description="what a register reading was taken for (docs/registers.md); pending_drop "
        "or pending_jump: decided, and kwhConsumedAc perhaps booked, by the next reading",
    )
    voltage: float | None = Field(None, description="null when the device does not send it")
    receivedAt: datetime
    ageSeconds: float = Field(description="now minus the reading's timestamp")
    linkedVehicleId: str | None = Field(description="the vehicle on this meter's charger now")


class VehicleStatus(Out):
    vehicleId: str
    timestamp: datetime = Field(description="the reading's own timestamp")
    soc: float | None = Field(None, description="null when the device does not send it")
    kwhDeliveredDc: Kwh
    kwhRegisterDc: Kwh | None = Field(None, description="the register, for a register reading")
    registerQuality: str | None = Field(
        None, description="what a register reading was taken for; pending_*: provisional"
    )
    batteryTemp: float | None = Field(None, description="null when the device does not send it")
    receivedAt: datetime
    ageSeconds: float = Field(description="now minus the reading's timestamp")
    linkedMeterId: str | None = Field(description="the meter of the charger it is on now")


class MeterStatusPage(Out):
    items: list[MeterStatus]
    limit: int
    nextCursor: str | None = Field(description="pass as cursor for the next page; null at the end")


class VehicleStatusPage(Out):
    items: list[VehicleStatus]
    limit: int
    nextCursor: str | None = Field(description="pass as cursor for the next page; null at the end")


# --- links ---------------------------------------------------------------------------------


class LinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    vehicleId: DeviceId
    meterId: DeviceId
    startedAt: Timestamp | None = Field(
        None, description="when the vehicle was connected (default: now); not in the future"
    )


class Link(Out):
    vehicleId: str
    meterId: str
    startedAt: datetime
    endedAt: datetime | None


class LinkHistory(Out):
    vehicleId: str
    current: Link | None
    history: list[Link] = Field(description="every link of the vehicle, newest first")


class MeterLinks(Out):
    meterId: str
    current: Link | None
    history: list[Link] = Field(description="every link of the meter, newest first")


# --- registers -----------------------------------------------------------------------------


class ReplacementRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    at: Timestamp = Field(description="when the old register was replaced by the new one")
    finalKwh: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)] | None = Field(
        None, description="the old register's last value, if known"
    )
    startKwh: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)] | None = Field(
        None, description="the new register's first value, if known"
    )


class Replacement(Out):
    kind: StreamName
    deviceId: str
    at: datetime
    finalKwh: Kwh | None
    startKwh: Kwh | None
    recordedAt: datetime


class Replacements(Out):
    kind: StreamName
    deviceId: str
    replacements: list[Replacement] = Field(description="newest first")


# --- analytics -----------------------------------------------------------------------------


class Performance(Out):
    vehicleId: str
    meterIds: list[str] = Field(description="meters the vehicle was linked to in the window")
    windowStart: datetime
    windowEnd: datetime
    totalKwhConsumedAc: Kwh = Field(
        description="AC drawn by the linked meters while the vehicle was linked to them"
    )
    totalKwhDeliveredDc: Kwh = Field(
        description="DC delivered into the battery while linked to a meter"
    )
    unlinkedKwhDeliveredDc: Kwh = Field(
        description="DC delivered while not linked to any meter (not compared)"
    )
    efficiencyRatio: float | None = Field(
        description="DC / AC; null when AC is 0 or the vehicle was idle (status idle)"
    )
    averageBatteryTemp: float | None
    meterReadingCount: int
    vehicleReadingCount: int = Field(description="vehicle readings in the window")
    status: Status
    provisional: bool = Field(
        False,
        description="a register reading of the vehicle or its meters waits for the next one "
        "to decide a drop or a jump: the figures may still change",
    )


class Stats(Out):
    sum: float | None
    min: float | None
    max: float | None
    avg: float | None


class MeterReadingOut(Out):
    timestamp: datetime
    kwhConsumedAc: Kwh
    voltage: float | None


class VehicleReadingOut(Out):
    timestamp: datetime
    soc: float | None
    kwhDeliveredDc: Kwh
    batteryTemp: float | None


class RegisterValue(Out):
    timestamp: datetime
    kwh: Kwh = Field(description="the register as the device reported it")


class RegisterStats(Out):
    """The register readings of a window: their first and last value and what they were
    taken for (docs/registers.md)."""

    readings: int = Field(description="register readings in the window")
    first: RegisterValue | None
    last: RegisterValue | None
    resets: int = Field(description="the register restarted from 0; booked from 0")
    glitches: int = Field(description="a drop the next reading undid; nothing booked")
    quarantined: int = Field(description="an implausible jump; nothing booked, not used further")
    dips: int = Field(description="a drop within REGISTER_DIP_KWH; held, nothing booked")
    rollovers: int = Field(description="the register wrapped at REGISTER_WRAP_KWH")
    shifts: int = Field(description="a jump the next reading confirmed; a new level")
    pending: int = Field(description="drops or jumps the next reading will decide")
    provisional: bool = Field(
        description="some energy of the window may still change: a drop or a jump waits for "
        "the reading after it"
    )


class MeterAnalytics(Out):
    meterId: str
    windowStart: datetime
    windowEnd: datetime
    readingCount: int
    kwhConsumedAc: Stats
    voltage: Stats
    firstReading: MeterReadingOut | None
    lastReading: MeterReadingOut | None
    vehicleIds: list[str] = Field(description="vehicles linked to this meter in the window")
    registers: RegisterStats | None = Field(
        None, description="when the meter reported registers in the window"
    )
    current: MeterStatus


class VehicleAnalytics(Out):
    vehicleId: str
    windowStart: datetime
    windowEnd: datetime
    readingCount: int
    soc: Stats
    kwhDeliveredDc: Stats
    batteryTemp: Stats
    firstReading: VehicleReadingOut | None
    lastReading: VehicleReadingOut | None
    meterIds: list[str] = Field(description="meters the vehicle was linked to in the window")
    registers: RegisterStats | None = Field(
        None, description="when the vehicle reported registers in the window"
    )
    current: VehicleStatus


class SeriesPoint(Out):
    bucketStart: datetime
    kwhConsumedAc: Kwh = Field(description="AC attributed to the vehicle in this bucket")
    kwhDeliveredDc: Kwh = Field(description="DC delivered while linked")
    efficiencyRatio: float | None = Field(
        description="DC / AC; null when AC is 0 or the bucket was idle (AC and DC below "
        "EFFICIENCY_IDLE_KW x the bucket's hours)"
    )
    socAvg: float | None
    socMin: float | None
    socMax: float | None
    batteryTempAvg: float | None
    batteryTempMax: float | None
    meterReadingCount: int
    vehicleReadingCount: int


class Series(Out):
    vehicleId: str
    bucket: str
    windowStart: datetime
    windowEnd: datetime
    points: list[SeriesPoint]


class MeterSeriesPoint(Out):
    bucketStart: datetime
    kwhConsumedAc: Kwh = Field(description="AC drawn by the meter in this bucket")
    voltageAvg: float | None
    voltageMin: float | None
    voltageMax: float | None
    readingCount: int


class MeterSeries(Out):
    meterId: str
    bucket: str
    windowStart: datetime
    windowEnd: datetime
    points: list[MeterSeriesPoint]


class DeviceCounts(Out):
    total: int = Field(description="devices known (that ever reported)")
    reporting: int = Field(description="devices with at least one reading in the window")
    silent: int = Field(description="known devices without a reading in the window")


class VehicleEfficiency(Out):
    vehicleId: str
    meterIds: list[str]
    totalKwhConsumedAc: Kwh
    totalKwhDeliveredDc: Kwh
    efficiencyRatio: float | None
    status: Status


class StatusCounts(Out):
    normal: int
    low_efficiency: int
    anomaly: int
    idle: int = Field(description="AC and DC both below EFFICIENCY_IDLE_KW over the window")
    insufficient_data: int


class FleetSummary(Out):
    asOf: datetime = Field(
        description="when the figures are of: the last 24 h are computed once for every "
        "client, so this may be up to FLEET_MAX_AGE_S before the request (it is windowEnd)"
    )
    windowStart: datetime
    windowEnd: datetime
    totalKwhConsumedAc: Kwh = Field(description="all meters")
    totalKwhDeliveredDc: Kwh = Field(description="all vehicles")
    efficiencyOverall: float | None = Field(
        description="DC / AC over every vehicle-meter link in the window"
    )
    meters: DeviceCounts
    vehicles: DeviceCounts
    vehiclesByStatus: StatusCounts
    lowEfficiencyVehicles: list[VehicleEfficiency] = Field(
        description="below the efficiency threshold, worst first (at most 100)"
    )
    anomalyVehicles: list[VehicleEfficiency] = Field(
        description="DC above AC, worst first (at most 100)"
    )


# --- ingest and system --------------------------------------------------------------------


class RejectedItem(Out):
    index: int = Field(description="position in the request (0-based; line for NDJSON)")
    reason: str
    detail: str


class IngestResponse(Out):
    accepted: int = Field(description="readings that passed validation and are committed")
    rejectedCount: int = Field(description="readings rejected (each is a dead letter)")
    rejected: list[RejectedItem] = Field(description="the first 100 rejections, by index")


class Component(Out):
    ok: bool
    detail: str | None = None
    hint: str | None = Field(
        None, description="what an operator must do, for an error that retrying cannot fix"
    )


class BufferState(Out):
    depth: int
    capacity: int


class Replication(Out):
    lagSeconds: float | None = Field(
        description="how far replay is behind the primary's last transaction (0 when all "
        "received WAL is replayed)"
    )
    receiveLsn: str | None
    replayLsn: str | None
    replayBehindBytes: float | None = Field(description="received WAL not replayed yet")
    maxLagSeconds: float = Field(description="REPLICA_MAX_LAG_S: beyond it, not ready")


class Health(Out):
    status: Literal["ok", "unavailable"]
    role: Literal["collector", "api"]
    database: Component
    broker: Component | None = Field(description="null when this process does not ingest")
    buffer: BufferState | None
    lastCommitAt: datetime | None
    replication: Replication | None = Field(
        None, description="when the database is a hot standby (a read replica)"
    )
    version: str


# --- alerts (collector/alerts evaluates; the API lists, acknowledges and silences) ----------

AlertSeverity = Literal["info", "warning", "critical"]
RuleName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


def _storable(value: str) -> str:
    """Text PostgreSQL can store: no NUL, and valid Unicode (no lone surrogate)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000)")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (a lone surrogate is not)") from None
    return value


#: Free text a person types (who acknowledged, a silence's comment): stored as it is.
FreeText = Annotated[
    str, AfterValidator(_storable), Field(json_schema_extra={"pattern": "^[^\\u0000]*$"})
]
Operator = Annotated[FreeText, Field(min_length=1, max_length=100)]


class AlertQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    state: Literal["open", "firing", "pending"] = Field(
        "open", description="open: firing and pending"
    )
    rule: RuleName | None = Field(None, description="only this rule's alerts")
    severity: AlertSeverity | None = Field(None, description="only alerts of this severity")
    kind: StreamName | None = Field(None, description="only meters' or only vehicles' alerts")
    deviceId: DeviceId | None = Field(None, description="only this device's alerts")
    limit: int = Field(500, ge=1, le=10_000, description="at most this many (worst first)")


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: int = Field(100, ge=1, le=1000, description="at most this many, newest first")


class Alert(Out):
    id: int
    rule: str
    kind: StreamName
    deviceId: str
    state: Literal["pending", "firing", "resolved"]
    severity: AlertSeverity
    value: float | None = Field(description="the value that made it fire (or resolved it)")
    since: datetime = Field(description="since when the condition holds")
    firedAt: datetime | None
    resolvedAt: datetime | None
    acknowledgedAt: datetime | None
    acknowledgedBy: str | None
    silenced: bool = Field(description="a silence holds its notifications back now")


class RuleCount(Out):
    rule: str
    count: int
    needsAction: int = Field(description="neither acknowledged nor silenced")


class AlertList(Out):
    count: int = Field(description="how many match (the list may be cut at limit)")
    alerts: list[Alert] = Field(description="critical first, then by when they started")


class AlertHistory(Out):
    kind: StreamName
    deviceId: str
    alerts: list[Alert] = Field(description="newest first")


class AcknowledgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    by: Operator = Field(description="who acknowledges it (shown with the alert)")


class SilenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    rule: RuleName | None = Field(None, description="silence this rule (on every device)")
    kind: StreamName | None = Field(None, description="with deviceId: the device's kind")
    deviceId: DeviceId | None = Field(None, description="silence this device (every rule)")
    until: Timestamp = Field(description="when the silence ends (at most 90 days ahead)")
    comment: Annotated[FreeText, Field(max_length=500)] = ""
    by: Operator = Field(description="who silences it")


class Silence(Out):
    id: int
    rule: str | None
    kind: StreamName | None
    deviceId: str | None
    until: datetime
    comment: str
    createdBy: str
    createdAt: datetime
    active: bool = Field(description="until is still ahead")


class Silences(Out):
    silences: list[Silence] = Field(description="active ones, ending soonest first")


# --- payload mappings (SOURCES_FILE) ------------------------------------------------------


class MappedField(Out):
    target: str
    path: str
    unit: str | None


class MappedSource(Out):
    name: str
    kind: StreamName
    topic: str = Field(description="as written in SOURCES_FILE, {name} capturing a level")
    subscription: str = Field(description="the MQTT filter subscribed to")
    deviceId: str = Field(description="the device id template")
    timestamp: str = Field(description="epoch_s, epoch_ms, iso, iso_local or receive")
    retained: str
    fields: list[MappedField]
    messages: dict[str, int | None] = Field(
        description="messages since start by outcome: stored, ignored, dead_lettered "
        "(null where this process takes no MQTT: energy-collector api)"
    )


class Sources(Out):
    native: list[str] = Field(description="the native topics' subscriptions")
    sources: list[MappedSource]


class SourceTestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    topic: Annotated[str, Field(min_length=1, max_length=65535)]
    payload: Any = Field(
        description="the message: a string is sent as its text, anything else as its JSON"
    )
    retained: bool = Field(False, description="as if the broker sent it retained")


class SourceTestRejection(Out):
    reason: str
    detail: str


class SourceTestResult(Out):
    topic: str
    source: str | None = Field(description="the source that takes the topic, or native")
    outcome: Literal["stored", "ignored", "dead_lettered", "no_source"]
    why: str | None = Field(None, description="why it is ignored (retained, when, no_energy)")
    readings: list[dict[str, Any]] = Field(description="what would be stored (nothing is)")
    rejected: SourceTestRejection | None
