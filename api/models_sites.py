"""The API's shapes for sites, device-days, balances and exports (SITES_FILE)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.models import Kwh, Out
from collector.ingest.readings import Timestamp


class SiteOut(Out):
    id: str
    name: str
    tz: str
    mainMeter: str | None
    members: list[str] = Field(description="device ids and glob patterns, as in SITES_FILE")
    devices: list[str] = Field(description="the members that have reported (not the main meter)")
    pricePerKwh: float | None
    currency: str | None
    lossTolerancePct: float


class SitesOut(Out):
    sites: list[SiteOut]


class BalanceQuery(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    from_: Timestamp | None = Field(None, alias="from", description="default: to - 24 h")
    to: Timestamp | None = Field(None, description="default: now")
    bucket: Literal["hour", "day"] = Field("hour", description="the site's local hours or days")


class BalanceRowOut(Out):
    start: datetime
    end: datetime
    mainKwh: Kwh
    membersKwh: Kwh
    untrackedKwh: Kwh = Field(description="mainKwh - membersKwh")
    untrackedRatio: float | None = Field(description="untrackedKwh / mainKwh")
    mainCoverage: float
    membersCoverage: float = Field(description="the lowest member's coverage")
    complete: bool = Field(
        description="both sides have data for the whole bucket (coverage >= 0.98); an "
        "incomplete bucket says nothing about losses"
    )
    overTolerance: bool = Field(
        description="complete, and the untracked share is above the site's loss_tolerance_pct"
    )


class BalanceOut(Out):
    siteId: str
    tz: str
    bucket: str
    mainMeter: str
    members: list[str]
    rows: list[BalanceRowOut]


class DaysQuery(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    from_: date | None = Field(
        None, alias="from", description="first local day (default: 7 days ago)"
    )
    to: date | None = Field(None, description="the day after the last (default: tomorrow)")
    tz: str | None = Field(None, max_length=64, description="default: the site's zone")


class DeviceDayOut(Out):
    kind: str
    deviceId: str
    day: date
    start: datetime
    end: datetime
    kwh: Kwh
    readings: int
    coverage: float = Field(
        description="the part of the day with readings at the device's usual cadence"
    )
    gapMinutes: int
    resets: int
    quarantined: int
    replaced: int
    provisional: bool = Field(
        description="the day is not over, or late readings could still change it"
    )
    cost: float | None
    currency: str | None


class DeviceDaysOut(Out):
    siteId: str
    tz: str
    days: list[DeviceDayOut]


class ExportQuery(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    from_: date = Field(alias="from", description="first local day")
    to: date = Field(description="the day after the last")
    site: str | None = Field(None, max_length=64, description="one site (default: all)")
    tz: str | None = Field(None, max_length=64, description="the days' zone")
    bucket: Literal["hour", "day"] = Field("hour", description="site-balance: per hour or day")
