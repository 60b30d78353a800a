"""The API's shapes for OCPP chargers and charging sessions (collector/sources/ocpp)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.models import Kwh, Out
from collector.ingest.readings import Timestamp

SessionState = Literal["active", "ended", "ended-offline"]


class SessionQuery(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    from_: Timestamp | None = Field(
        None, alias="from", description="sessions started at or after this time"
    )
    to: Timestamp | None = Field(None, description="sessions started before this time")
    charger: str | None = Field(None, max_length=64, description="a charger id")
    idTag: str | None = Field(None, max_length=255, description="an id tag")
    vehicle: str | None = Field(None, max_length=64, description="a vehicle id")
    state: SessionState | None = None
    limit: int = Field(100, ge=1, le=1000, description="at most this many, newest first")


class Session(Out):
    id: int
    chargerId: str
    connectorId: int = Field(description="the connector (OCPP 2.0.1: the EVSE)")
    meterId: str = Field(description="the connector's meter: {chargerId}-{connectorId}")
    transactionId: str
    protocol: str
    idTag: str | None
    vehicleId: str | None = Field(description="the vehicle the id tag stands for, if any")
    startedAt: datetime
    stoppedAt: datetime | None
    kwh: Kwh = Field(description="booked from our register history inside the session")
    kwhCharger: Kwh | None = Field(
        description="the charger's own figure: meterStop - meterStart (2.0.1: the last "
        "register of its events - the first)"
    )
    kwhDifference: Kwh | None = Field(description="kwh - kwhCharger")
    readings: int = Field(description="register readings inside the session")
    stopReason: str | None
    state: SessionState
    provisional: bool = Field(
        description="active, or a reading inside is still pending: kwh may change"
    )
    socStart: float | None
    socEnd: float | None
    quality: list[str] = Field(
        description="start-missing, stop-missing, seq-gap, id-tag-refused, link-refused, "
        "start-time-invalid, no-meter-values, differs (kwh and kwhCharger differ by more "
        "than 1 % and 10 Wh)"
    )


class Sessions(Out):
    sessions: list[Session]


class SignedValue(Out):
    measurand: str
    signedData: str
    signingMethod: str | None
    encoding: str | None
    publicKey: str | None


class SessionMeterValue(Out):
    timestamp: datetime
    kwhRegister: Kwh | None
    kwh: Kwh = Field(description="the energy this reading booked")
    quality: str | None = Field(description="the register engine's verdict (docs/registers.md)")
    voltage: float | None
    signed: list[SignedValue]


class SessionDetail(Session):
    meterValues: list[SessionMeterValue] = Field(
        description="the connector's register readings from the start to the stop, inclusive"
    )


class Connector(Out):
    connectorId: int
    meterId: str
    status: str
    errorCode: str | None
    info: str | None
    since: datetime
    receivedAt: datetime


class Charger(Out):
    id: str
    connected: bool = Field(
        description="connected now: a connection is open and the charger was heard from "
        "within two heartbeat intervals"
    )
    protocol: str | None
    vendor: str | None
    model: str | None
    serialNumber: str | None
    firmware: str | None
    hasPassword: bool
    registeredAt: datetime
    connectedAt: datetime | None
    disconnectedAt: datetime | None
    lastBootAt: datetime | None
    lastHeartbeatAt: datetime | None
    lastSeenAt: datetime | None
    bootStatus: str | None = Field(description="relay mode: what the operator's CSMS answered")
    activeSessions: int
    connectors: list[Connector]


class Chargers(Out):
    chargers: list[Charger]
