"""Energy units to kWh, scaled exactly: ``1.1 Wh`` is 0.0011 kWh, not 0.0011000000000000001.

A value is taken as its decimal text (a JSON number or a numeric string), multiplied by
the unit's factor as a ``Decimal``, and only then made a float: the one rounding is the
float's own, as if the device had sent kWh.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

#: kWh per unit.
ENERGY_UNITS: dict[str, Decimal] = {
    "Wh": Decimal("0.001"),
    "kWh": Decimal(1),
    "mWh": Decimal("0.000001"),
    "Wmin": Decimal(1) / Decimal(60_000),  # Shelly Gen1 relays count Watt-minutes
    "MWh": Decimal(1000),
}


class NotANumber(ValueError):
    """A value that is no number (a string of letters, a list, true)."""


def number(value: object) -> Decimal:
    """A JSON number or numeric string as a Decimal (its exact decimal text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise NotANumber(f"{value!r} is not a number")
    try:
        out = Decimal(value.strip() if isinstance(value, str) else repr(value))
    except InvalidOperation:
        raise NotANumber(f"{value!r} is not a number") from None
    if not out.is_finite():
        raise NotANumber(f"{value!r} is not a finite number")
    return out


def to_kwh(value: object, unit: str) -> float:
    """``value`` in ``unit`` as kWh."""
    return float(number(value) * ENERGY_UNITS[unit])
