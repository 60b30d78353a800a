"""Alert rules: the built-in ones, or those of a TOML file (``ALERT_RULES_FILE``).

A rule is checked in full when the collector starts (``run`` and ``check``): a bad file
stops it with one line naming the rule and the field, never a rule that silently never
fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from collector.errors import UsageError
from collector.ingest.streams import STREAMS, Stream, StreamName
from collector.settings import Settings
from collector.tomlfile import array_of_tables, read_toml

RuleKind = Literal[
    "threshold",
    "silent",
    "efficiency",
    "register",
    "charger_offline",
    "connector_faulted",
    "site_imbalance",
]
#: Kinds about OCPP chargers: alerts on a connector's meter ({chargerId}-{connectorId}), or
#: for the charger as a whole on {chargerId}-0 (OCPP's connector 0 is the charge point).
CHARGER_KINDS = ("charger_offline", "connector_faulted")
#: Kinds whose alerts are on meters only.
METER_KINDS = (*CHARGER_KINDS, "site_imbalance")
Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")
STREAM_NAMES: tuple[StreamName, ...] = tuple(s.name for s in STREAMS.values())


@dataclass(frozen=True, slots=True)
class WatchedField:
    """A reading field a threshold rule may watch: its stream, and its column in the
    current and history tables."""

    stream: Stream
    column: str


#: The reading fields a threshold rule may name (the names of the readings' JSON).
FIELDS: dict[str, WatchedField] = dict(
    sorted((m.field, WatchedField(s, m.column)) for s in STREAMS.values() for m in s.measures)
)
DAY_S = 86_400
#: A threshold: any finite number a reading field can take.
Limit = Annotated[float, Field(ge=-1e9, le=1e9)]


class RulesError(UsageError):
    """The rules file cannot be used; the message is one line naming the rule and field."""


class AlertRule(BaseModel):
    """One rule. ``kind`` decides which fields apply:

    - ``threshold``: ``field`` of the latest reading ``above`` (or ``below``) a value for
      ``for_s`` seconds of readings; resolves past ``clear_below`` (``clear_above``).
    - ``silent``: a device that reported within ``active_within_s`` has sent nothing for
      ``for_s`` seconds; resolves when it reports. Only a device whose latest reading
      arrived live (within ``for_s`` of its timestamp) can be silent: one replaying old
      readings, or never live here (imported history), is not.
    - ``efficiency``: a vehicle's DC/AC over the last ``window_s`` ``below`` (or ``above``)
      a value, counted only with at least ``min_ac_kwh`` of AC energy.
    - ``register``: at least ``min_count`` register resets or quarantined readings in the
      last ``window_s``; resolves when the window holds none.
    - ``charger_offline``: an OCPP charger heard from within ``active_within_s`` has not
      been heard from (no connection, no heartbeat, no message) for ``for_s``; on its meter
      ``{chargerId}-0``; resolves when it talks again.
    - ``connector_faulted``: a connector's last StatusNotification says ``Faulted`` and
      has for ``for_s``; on the connector's meter; resolves with any other status.
    - ``site_imbalance``: a site's (SITES_FILE) untracked share (main meter minus members,
      over the main meter) above its ``loss_tolerance_pct`` in every complete hour of the
      last ``for_s`` (at least one); on the site's main meter; resolves with a complete
      hour within the tolerance. Hours with incomplete data on either side never count.
    """

    # strict: a number is a TOML number (not true, not "5"); nan and inf are refused
    # (`above = nan` would never fire, `clear_below = nan` never resolve)
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    kind: RuleKind
    stream: StreamName | None = None
    field: str | None = None
    above: Limit | None = None
    below: Limit | None = None
    for_s: Annotated[float, Field(ge=0, le=30 * DAY_S)] = 0.0
    clear_below: Limit | None = None
    clear_above: Limit | None = None
    severity: Severity = "warning"
    min_ac_kwh: Annotated[float, Field(ge=0, le=1_000_000)] = 1.0
    window_s: Annotated[float, Field(ge=3600, le=31 * DAY_S)] = DAY_S
    active_within_s: Annotated[float, Field(gt=0, le=366 * DAY_S)] = 7 * DAY_S
    min_count: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    description: Annotated[str, Field(max_length=1000)] = ""

    @model_validator(mode="after")
    def _check_kind(self) -> AlertRule:
        if self.kind in ("threshold", "efficiency"):
            self._check_limits()
        else:
            for name in ("above", "below", "clear_below", "clear_above"):
                if getattr(self, name) is not None:
                    raise _FieldError(name, f"does not apply to a {self.kind} rule")
        if self.kind == "threshold":
            self._check_field()
        elif self.field is not None:
            raise _FieldError("field", f"does not apply to a {self.kind} rule")
        if self.kind == "efficiency" and self.stream == "meter":
            raise _FieldError("stream", "efficiency is a vehicle's (DC out of the AC in)")
        if self.kind in ("silent", "charger_offline") and self.for_s <= 0:
            raise _FieldError("for_s", f"a {self.kind} rule needs how long it lasts (> 0)")
        if self.kind in METER_KINDS and self.stream == "vehicle":
            raise _FieldError("stream", f"a {self.kind} rule's alerts are on meters")
        if self.kind == "site_imbalance" and self.for_s < 3600:
            raise _FieldError("for_s", "a site_imbalance rule looks at whole hours (>= 3600)")
        return self

    def _check_limits(self) -> None:
        if (self.above is None) == (self.below is None):
            raise _FieldError("above", f"a {self.kind} rule needs exactly one of above, below")
        if self.above is not None and self.clear_above is not None:
            raise _FieldError("clear_above", "goes with below; an above rule has clear_below")
        if self.below is not None and self.clear_below is not None:
            raise _FieldError("clear_below", "goes with above; a below rule has clear_above")
        low_clear = self.clear_below
        if self.above is not None and low_clear is not None and low_clear > self.above:
            raise _FieldError("clear_below", f"must be at most above ({self.above})")
        high_clear = self.clear_above
        if self.below is not None and high_clear is not None and high_clear < self.below:
            raise _FieldError("clear_above", f"must be at least below ({self.below})")

    def _check_field(self) -> None:
        if self.field is None:
            raise _FieldError("field", f"a threshold rule needs one of {', '.join(FIELDS)}")
        if self.field not in FIELDS:
            raise _FieldError("field", f"{self.field!r} is not one of {', '.join(FIELDS)}")
        stream = FIELDS[self.field].stream.name
        if self.stream not in (None, stream):
            raise _FieldError("stream", f"{self.field} is a field of the {stream} stream")

    @property
    def streams(self) -> tuple[StreamName, ...]:
        """The streams the rule watches (a threshold's field decides; none named: all)."""
        if self.kind == "threshold":
            assert self.field is not None
            return (FIELDS[self.field].stream.name,)
        if self.kind == "efficiency":
            return ("vehicle",)
        if self.kind in METER_KINDS:
            return ("meter",)
        return (self.stream,) if self.stream else STREAM_NAMES

    @property
    def clear_at(self) -> float | None:
        """The value past which a firing alert resolves (the threshold itself if no
        hysteresis is given)."""
        if self.above is not None:
            return self.clear_below if self.clear_below is not None else self.above
        if self.below is not None:
            return self.clear_above if self.clear_above is not None else self.below
        return None


class _FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def builtin_rules(settings: Settings) -> tuple[AlertRule, ...]:
    """The rules that apply without a file: bad chargers, silent devices, hot batteries,
    register trouble."""
    return (
        AlertRule(
            name="low_efficiency",
            kind="efficiency",
            below=settings.efficiency_low,
            severity="warning",
            description="a vehicle's DC/AC over 24 h is below EFFICIENCY_LOW: a likely "
            "charger fault",
        ),
        AlertRule(
            name="efficiency_anomaly",
            kind="efficiency",
            above=settings.efficiency_max,
            severity="warning",
            description="a vehicle's DC/AC over 24 h is above EFFICIENCY_MAX: a wrong link "
            "or a bad meter",
        ),
        AlertRule(
            name="device_silent",
            kind="silent",
            for_s=settings.dashboard_silent_minutes * 60,
            severity="warning",
            description="a device that reported in the last 7 days has sent nothing for "
            "DASHBOARD_SILENT_MINUTES",
        ),
        AlertRule(
            name="battery_hot",
            kind="threshold",
            field="batteryTemp",
            above=55.0,
            clear_below=50.0,
            for_s=300,
            severity="critical",
            description="battery temperature above 55 °C for 5 minutes",
        ),
        AlertRule(
            name="register_anomaly",
            kind="register",
            severity="warning",
            description="a register reset or a quarantined register reading in the last 24 h",
        ),
        AlertRule(
            name="charger_offline",
            kind="charger_offline",
            for_s=max(settings.dashboard_silent_minutes * 60, 2 * settings.ocpp_heartbeat_s + 60),
            severity="warning",
            description="an OCPP charger has not been heard from (no connection, no "
            "heartbeat) for DASHBOARD_SILENT_MINUTES (at least two heartbeat intervals)",
        ),
        AlertRule(
            name="site_imbalance",
            kind="site_imbalance",
            for_s=3 * 3600,
            severity="warning",
            description="a site's untracked energy (main meter minus its members) above its "
            "loss_tolerance_pct in every complete hour of the last 3 hours",
        ),
        AlertRule(
            name="connector_faulted",
            kind="connector_faulted",
            for_s=300,
            severity="warning",
            description="a charger's connector has reported Faulted for 5 minutes",
        ),
    )


def load_rules(settings: Settings) -> tuple[AlertRule, ...]:
    """The rules in force: those of ``ALERT_RULES_FILE``, else the built-in ones."""
    path = settings.alert_rules_file
    if not path:
        return builtin_rules(settings)
    document = read_toml(path, f"ALERT_RULES_FILE {path}", RulesError)
    return parse_rules(document, source=path)


def parse_rules(document: dict[str, object], *, source: str) -> tuple[AlertRule, ...]:
    """The ``[[rule]]`` tables of a parsed rules file, checked."""
    tables = array_of_tables(document, "rule", source, RulesError, "rules")
    if not tables:
        raise RulesError(
            f"{source}: no rules (no [[rule]] table); to run without alerts, set "
            "ALERTS_ENABLED=false"
        )
    rules: list[AlertRule] = []
    names: set[str] = set()
    for number, table in enumerate(tables, start=1):
        label = (
            f"rule {table.get('name')!r}"
            if isinstance(table.get("name"), str)
            else (f"rule #{number}")
        )
        try:
            rule = AlertRule.model_validate(table)
        except ValidationError as exc:
            raise RulesError(f"{source}: {label}: {_describe(exc)}") from None
        if rule.name in names:
            raise RulesError(f"{source}: {label}: field 'name': used by another rule")
        names.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _describe(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    ctx_error = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_error, _FieldError):
        return f"field {ctx_error.field!r}: {ctx_error}"
    field = ".".join(str(p) for p in err["loc"]) or "rule"
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "is not a rule field"
    elif err["type"] == "missing":
        message = "is required"
    return f"field {field!r}: {message}"
