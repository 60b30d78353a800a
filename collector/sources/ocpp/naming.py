"""How chargers and their connectors are named: the contract the API shares (pure)."""

from __future__ import annotations

import re

#: A charger id is a device id's prefix: its connectors are meters ``{id}-{connector}``.
CHARGER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,59}$")


def meter_of(charger_id: str, connector_id: int) -> str:
    """The meter a connector (2.0.1: an EVSE) is: ``{chargerId}-{connectorId}``. Connector
    0 is the charger as a whole (OCPP's own meaning): its alerts are on ``{chargerId}-0``."""
    return f"{charger_id}-{connector_id}"
