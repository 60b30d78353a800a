"""Sites (``SITES_FILE``): a depot or a car park, its main meter, its members, its zone.

Operators think in sites: a main meter at the grid connection, chargers and sub-meters under
it, billed per local day of the site's time zone at the site's price. A site names its
members by device id or glob pattern (``cp-01-*``); a device belongs to one site at most
(two would count its energy twice). The file is checked whole when the collector starts
(``run``, ``check``): a bad one stops it with one line naming the site and the key.
"""

from __future__ import annotations

import fnmatch
import re
import zoneinfo
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from collector.db.connection import Connection
from collector.errors import UsageError
from collector.settings import Settings, known_zone
from collector.tomlfile import array_of_tables, read_toml

SITE_ID = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class SitesError(UsageError):
    """SITES_FILE cannot be used; the message is one line naming the site and the key."""


class Site(BaseModel):
    """One ``[[site]]`` table."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    id: Annotated[str, Field(pattern=SITE_ID)]
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    tz: str = "UTC"
    main_meter: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    members: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list)
    price_per_kwh: Annotated[float, Field(ge=0, le=1000)] | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None
    loss_tolerance_pct: Annotated[float, Field(ge=0, le=100)] = 3.0

    @field_validator("tz")
    @classmethod
    def _zone(cls, value: str) -> str:
        return known_zone(value)

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.tz)

    @property
    def label(self) -> str:
        return self.name or self.id

    def has(self, device_id: str) -> bool:
        """Whether ``device_id`` is a member (the main meter is not one: it is the other
        side of the balance)."""
        return device_id != self.main_meter and any(
            fnmatch.fnmatchcase(device_id, pattern) for pattern in self.members
        )


@dataclass(frozen=True, slots=True)
class Sites:
    """Every site of the file, and which one a device belongs to."""

    sites: tuple[Site, ...] = ()

    def get(self, site_id: str) -> Site | None:
        return next((s for s in self.sites if s.id == site_id), None)

    def of(self, device_id: str) -> Site | None:
        """The site a device is a member or the main meter of."""
        for site in self.sites:
            if device_id == site.main_meter or site.has(device_id):
                return site
        return None

    def overlaps(self, device_ids: list[str]) -> tuple[str, str, str] | None:
        """A device two sites claim (device, site, other site), else None."""
        for device in device_ids:
            claimed = [s.id for s in self.sites if device == s.main_meter or s.has(device)]
            if len(claimed) > 1:
                return device, claimed[0], claimed[1]
        return None


async def check_devices(sites: Sites, conn: Connection, where: str) -> None:
    """A device the sites' patterns put in two sites is an error (SitesError, one line):
    checked against the devices that have reported, when the collector starts."""
    if not sites.sites:
        return
    ids = [r[0] for r in await conn.fetch(
        "SELECT meter_id FROM meter_current UNION ALL SELECT vehicle_id FROM vehicle_current"
    )]  # fmt: skip
    clash = sites.overlaps(ids)
    if clash is not None:
        device, first, second = clash
        raise SitesError(
            f"{where}: site {second!r}: key 'members': device {device!r} is already in "
            f"site {first!r} (a device belongs to one site)"
        )


def load_sites(settings: Settings) -> Sites:
    """The sites of ``SITES_FILE`` (none when it is not set), checked."""
    path = settings.sites_file
    if not path:
        return Sites()
    where = f"SITES_FILE {path}"
    document = read_toml(path, where, SitesError)
    return parse_sites(array_of_tables(document, "site", where, SitesError, "sites"), where)


def parse_sites(tables: list[dict[str, object]], where: str) -> Sites:
    sites: list[Site] = []
    for number, table in enumerate(tables, start=1):
        label = f"site {table['id']!r}" if isinstance(table.get("id"), str) else f"site #{number}"
        try:
            site = Site.model_validate(table)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "site"
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = f"is not a site key ({', '.join(Site.model_fields)})"
            elif err["type"] == "missing":
                message = "is required"
            raise SitesError(f"{where}: {label}: key {key!r}: {message}") from None
        if any(s.id == site.id for s in sites):
            raise SitesError(f"{where}: {label}: key 'id': used by another site")
        if site.price_per_kwh is not None and site.currency is None:
            raise SitesError(
                f"{where}: {label}: key 'currency': required with price_per_kwh (e.g. \"EUR\")"
            )
        sites.append(site)
    found = Sites(tuple(sites))
    # The literal ids: a device named in two sites (patterns are checked against the devices
    # that exist, when the energy is read: a pattern may match none yet).
    literal = [
        m
        for s in sites
        for m in (*s.members, *([s.main_meter] if s.main_meter else []))
        if not re.search(r"[*?\[]", m)
    ]
    clash = found.overlaps(literal)
    if clash is not None:
        device, first, second = clash
        raise SitesError(
            f"{where}: site {second!r}: key 'members': device {device!r} is already in "
            f"site {first!r}"
        )
    return found
