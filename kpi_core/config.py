"""The monitor's configuration (``kpimon.yaml``): declared once, typed, checked at start.

Everything the domain needs is here: windows, breakdowns, measures, KPIs and
targets. Connection settings (Kafka, Slack) come from the environment and live in
the adapters. Errors name the field by its dotted path and say what was expected.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kpi_core import formats
from kpi_core.errors import ConfigError
from kpi_core.events import ALWAYS_PRESENT, EVENT_TYPES, OPTIONAL_FIELDS, OPTIONAL_NUMBERS, SESSION_FIELDS, TYPE_FIELDS

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_duration(value: Any) -> int:
    """A duration such as ``30s``, ``1m``, ``1h`` or ``1d`` in milliseconds."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value * 1000  # a bare number is seconds
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"expected a duration such as 30s, 1m, 1h or 1d, got {value!r}")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def format_duration(ms: int) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        if ms % _UNIT_MS[unit] == 0 and ms >= _UNIT_MS[unit]:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Window(_Model):
    """One window size. Tumbling unless ``step`` is smaller than ``size`` (hopping)."""

    size: int
    step: int | None = None
    name: str = ""

    _parse = field_validator("size", "step", mode="before")(lambda v: None if v is None else parse_duration(v))

    @model_validator(mode="after")
    def _check(self) -> Window:
        if self.size <= 0:
            raise ValueError("size must be positive")
        step = self.step or self.size
        if step > self.size or self.size % step:
            raise ValueError("step must divide size")
        object.__setattr__(self, "step", step)
        if not self.name:
            object.__setattr__(self, "name", format_duration(self.size))
        return self


class Filter(_Model):
    """A condition on one attribute: ``eq``, ``in`` or ``prefix``."""

    eq: str | bool | int | None = None
    in_: list[str | bool | int] | None = Field(default=None, alias="in")
    prefix: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Filter:
        if sum(x is not None for x in (self.eq, self.in_, self.prefix)) != 1:
            raise ValueError("give exactly one of eq, in, prefix")
        return self


class Measure(_Model):
    """A windowed aggregate: over one event type a count, the sum of a numeric field or an
    approximate distinct count of a field, with optional filters; or the sum of other measures."""

    event: str | None = None
    sum: str | None = None
    distinct: str | None = None
    add: list[str] | None = None  # e.g. cost = click_cost + spend
    where: dict[str, Filter] = {}

    @model_validator(mode="after")
    def _kind(self) -> Measure:
        if self.add is not None:
            if self.event or self.sum or self.distinct or self.where:
                raise ValueError("a measure with add: takes no event, sum, distinct or where")
        elif self.event is None:
            raise ValueError("give event: (a count, sum or distinct over one event type) or add: [measures]")
        elif self.sum and self.distinct:
            raise ValueError("give at most one of sum, distinct")
        return self

    def refs(self) -> list[str]:
        return list(self.add or [])

    @field_validator("where", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `where: {page: /checkout}` is shorthand for `where: {page: {eq: /checkout}}`.
        if isinstance(value, dict):
            return {k: v if isinstance(v, dict) else {"eq": v} for k, v in value.items()}
        return value


class Kpi(_Model):
    """A KPI over measures, of one of four kinds:

    - ``ratio: [a, b]``: a / b (CTR, CPC, conversion rates);
    - ``difference: [a, b], over: c``: (a − b) / c (ROI, NPS, profit per acquisition);
    - ``change: a``: (a − a of the previous window) / a of the previous window (sales growth);
    - ``measure: a``: the measure itself (revenue, sessions).

    ``scale`` multiplies the result (CPM is cost / impressions × 1000).
    """

    ratio: tuple[str, str] | None = None
    difference: tuple[str, str] | None = None
    over: str | None = None
    change: str | None = None
    measure: str | None = None
    scale: float = 1.0
    direction: Literal["higher", "lower", "context"] = "higher"
    unit: Literal["ratio", "percent", "currency", "seconds", "count"] = "ratio"
    format: str | None = None  # a Python format spec such as ".1%"; default by unit
    enabled: bool = True
    # A KPI tree: ratio KPIs whose product is this one ("/name" divides), e.g. roas:
    # [click_to_order, aov, /cost_per_click]. An alert then says which of them moved it.
    drivers: list[str] | None = None

    @model_validator(mode="after")
    def _kind(self) -> Kpi:
        kinds = [k for k in ("ratio", "difference", "change", "measure") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of ratio, difference (with over), change, measure")
        if (self.difference is None) != (self.over is None):
            raise ValueError("difference: [a, b] goes with over: c")
        if self.format is not None:
            try:
                format(0.5, self.format)
            except ValueError:
                raise ValueError(f"format {self.format!r} is not a Python format spec such as '.2%'") from None
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("ratio", "difference", "change", "measure") if getattr(self, k) is not None)

    def refs(self) -> list[str]:
        """The measures this KPI reads, numerator side first."""
        if self.ratio:
            return list(self.ratio)
        if self.difference:
            return [*self.difference, str(self.over)]
        return [str(self.change or self.measure)]


class Drift(_Model):
    """Alert when a KPI moves away from what its baseline expects, to its bad side.

    ``seasonal`` (the default, kpi_core/baseline.py): the expectation for *this* hour of day
    and day of week, learned; a breach is a value outside the prediction interval at
    ``confidence`` and at least ``change`` (a fraction) away from the expected value.
    ``trailing`` / ``week``: at least ``change`` beyond the mean of the trailing ``windows``
    (or the same window a week earlier); no notion of spread.
    """

    change: float = 0.25  # the smallest change worth a page, relative to the baseline
    baseline: Literal["seasonal", "trailing", "week"] = "seasonal"
    confidence: float = Field(default=0.9999, gt=0.5, lt=1)  # seasonal: the prediction interval (two-sided)
    warmup: int = Field(default=72, ge=1)  # seasonal: windows learned before any is judged (3 days of hours)
    sides: Literal["bad", "both"] = "bad"  # both: a rise and a drop are drift (default for direction: context)
    windows: int = Field(default=6, ge=1, le=500)  # trailing windows in the baseline
    method: Literal["mean", "ewma"] = "mean"
    alpha: float = Field(default=0.3, gt=0, le=1)  # EWMA weight of the newest window

    _percent = field_validator("change", mode="before")(lambda v: _parse_number(v))


class Target(_Model):
    """The alerting rule of one KPI: a static target and/or drift from a baseline, gated by
    volume and confidence, with for-duration, hysteresis, cooldown, re-notify and severity.
    ``overrides`` replace fields per breakdown value, matched exactly first, then by glob."""

    value: float | None = None  # static target; which side is bad comes from the KPI's direction
    clear: float | None = None  # hysteresis: a firing incident resolves only past this (default: value)
    drift: Drift | None = None
    min_denominator: float = 0.0  # below this volume a window says nothing: 1 click in 3 impressions
    min_numerator: float = 0.0
    confidence: float | None = Field(default=None, gt=0.5, lt=1)  # Wilson interval for proportions
    for_windows: int = Field(default=1, ge=1, alias="for")  # consecutive breaching windows before firing
    cooldown: int = 0  # event time after a resolve during which the incident won't re-open
    renotify: int | None = None  # remind while still firing, every this much event time
    critical: float = Field(default=0.5, ge=0)  # a breach this far past the line (relative) is critical
    overrides: dict[str, dict[str, dict[str, Any]]] = {}  # dimension -> pattern -> fields

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    _numbers = field_validator("value", "clear", mode="before")(lambda v: _parse_number(v))
    _durations = field_validator("cooldown", "renotify", mode="before")(lambda v: None if v is None else parse_duration(v))

    @field_validator("overrides", mode="before")
    @classmethod
    def _override_shorthand(cls, value: Any) -> Any:
        # `overrides: {campaign: {"brand-*": 5%}}` is shorthand for `{value: 5%}`.
        if isinstance(value, dict):
            return {
                d: {p: v if isinstance(v, dict) else {"value": v} for p, v in (pats or {}).items()}
                for d, pats in value.items()
            }
        return value

    @model_validator(mode="after")
    def _check_overrides(self) -> Target:
        base = self.model_dump(by_alias=True, exclude={"overrides"})
        for dim, patterns in self.overrides.items():
            for pattern, fields in patterns.items():
                if "overrides" in fields:
                    raise ValueError(f"overrides.{dim}.{pattern}: overrides do not nest")
                try:
                    Target.model_validate({**base, **fields})  # each override must make a valid rule
                except ValidationError as exc:
                    err = exc.errors()[0]
                    where = ".".join(str(x) for x in err["loc"])
                    raise ValueError(f"overrides.{dim}.{pattern}.{where}: {err['msg'].removeprefix('Value error, ')}") from None
        return self

    def rule_for(self, group: dict[str, str]) -> Target:
        """The rule for one breakdown value: the first exact match, then globs, then the default."""
        if not self.overrides:
            return self
        fields = next((pats[group[d]] for d, pats in self.overrides.items() if group.get(d) in pats), None)
        if fields is None:
            fields = next(
                (f for d, pats in self.overrides.items() if d in group for p, f in pats.items() if fnmatch.fnmatchcase(group[d], p)),
                None,
            )
        if fields is None:
            return self
        base = self.model_dump(by_alias=True, exclude={"overrides"})
        return Target.model_validate({**base, **fields})

    def for_group(self, group: dict[str, str]) -> float | None:
        """The static target for one breakdown value."""
        return self.rule_for(group).value


class Route(_Model):
    """Send one group's alerts to a Slack channel, optionally mentioning someone."""

    match: dict[str, str]  # dimension (or "kpi") -> exact value or glob
    channel: str
    mention: str | None = None


class NoData(_Model):
    """An active group whose ``measures`` all stop for ``windows`` windows raises a no-data alert."""

    measures: list[str] = ["impressions", "clicks"]
    windows: int = Field(default=2, ge=1)
    breakdowns: list[list[str]] = [["campaign"]]


class Fdr(_Model):
    """False-discovery-rate control: the breaches of one window are judged together
    (Benjamini–Hochberg), so that of the incidents opened, on average at most ``q`` are false.
    ``family``: one correction over every rule of the window (``global``) or one per rule."""

    q: float = Field(default=0.1, gt=0, lt=1)
    family: Literal["global", "rule"] = "global"

    _percent = field_validator("q", mode="before")(lambda v: _parse_number(v))


def _zone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}; expected an IANA name such as Europe/Berlin") from None
    return value


class SlackControls(_Model):
    """Slack as a control surface (needs SLACK_APP_TOKEN): who may press an incident's buttons.

    With neither list, anyone who can see the message may; user IDs look like ``U0123ABCD``,
    user-group IDs like ``S0123ABCD``."""

    allowed_users: list[str] = []
    allowed_groups: list[str] = []
    charts: bool = True  # a PNG of the KPI in each opened incident's thread (bot token, files:write)

    @field_validator("allowed_users", "allowed_groups")
    @classmethod
    def _ids(cls, values: list[str]) -> list[str]:
        for v in values:
            if not re.fullmatch(r"[A-Z][A-Z0-9]{2,}", v):
                raise ValueError(f"{v!r} is not a Slack ID (such as U0123ABCD or S0123ABCD); names and @handles change, IDs do not")
        return values


class Digest(_Model):
    """A daily summary posted to one Slack channel at a local time: yesterday's KPIs against
    their targets for the channel's groups, the top movers, incidents opened and resolved."""

    channel: str | None = None  # else alerting.default_channel / SLACK_CHANNEL
    at: str = "09:00"  # local time, HH:MM (or HH:MM:SS)
    timezone: str = "UTC"
    window: str | None = None  # the configured window summed into the day; default: the smallest
    breakdown: list[str] = ["campaign"]  # the digest's rows: groups of this breakdown routed to the channel
    kpis: list[str] | None = None  # default: the KPIs with targets
    top: int = Field(default=10, ge=1, le=50)  # rows and movers shown

    _tz = field_validator("timezone")(lambda v: _zone(v))

    @field_validator("at")
    @classmethod
    def _clock(cls, value: str) -> str:
        m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)(:[0-5]\d)?", value.strip())
        if not m:
            raise ValueError(f"expected a local time HH:MM such as 09:00, got {value!r}")
        return f"{int(m[1]):02d}:{m[2]}{m[3] or ''}"


class Alerting(_Model):
    """Where alerts go and what they link to."""

    routes: list[Route] = []
    default_channel: str | None = None  # else SLACK_CHANNEL
    grafana_url: str | None = None  # base URL of the KPI dashboard, for links in messages
    no_data: NoData | None = None
    timezone: str = "UTC"  # where "this hour on Tuesdays" is reckoned (seasonal baselines; DST-safe)
    fdr: Fdr | None = Fdr()  # null: every breach may open an incident on its own evidence
    slack: SlackControls = SlackControls()
    digests: list[Digest] = []

    _tz = field_validator("timezone")(lambda v: _zone(v))

    def route(self, group: dict[str, str], kpis: list[str]) -> tuple[str | None, str | None]:
        """The Slack channel (None: SLACK_CHANNEL) and mention for a group's alerts on these KPIs: the first route that matches."""
        for route in self.routes:
            if all(any(v is not None and fnmatch.fnmatchcase(v, pattern) for v in (kpis if dim == "kpi" else [group.get(dim)]))
                   for dim, pattern in route.match.items()):
                return route.channel, route.mention
        return self.default_channel, None


def _day_problems(window: Window, zone: str) -> list[str]:
    """Why a window cannot make up a digest's local days: hopping, or not fitting the zone's midnight."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    if (window.step or window.size) != window.size:
        return [f"window {window.name} hops (step {format_duration(window.step or 0)}): a digest sums tumbling windows, each event once"]
    tz = ZoneInfo(zone)
    for month in (1, 7):  # winter and summer time
        offset = datetime(2024, month, 1, tzinfo=tz).utcoffset()
        ms = int(offset.total_seconds() * 1000) if offset is not None else 0
        if ms % window.size:
            return [f"window {window.name} does not fit {zone}'s days (UTC offset {offset}): windows start on UTC boundaries; "
                    "choose one that divides the offset, such as 1h or 15m"]
    return []


def driver_factors(kpi: Kpi) -> list[tuple[str, int]]:
    """A KPI tree's factors as (KPI name, exponent ±1), from ``drivers``."""
    return [(d[1:], -1) if d.startswith("/") else (d, 1) for d in kpi.drivers or ()]


def _check_drivers(name: str, k: Kpi, kpis: dict[str, Kpi]) -> list[tuple[str, str]]:
    """A tree must multiply out to its KPI: the measures cancel to the KPI's own ratio."""
    if not k.drivers:
        return []
    path = f"kpis.{name}.drivers"
    if not k.ratio:
        return [(path, "only a ratio KPI has drivers (its value is a product of other ratios)")]
    powers: dict[str, int] = {k.ratio[0]: -1, k.ratio[1]: 1}
    for i, (factor, sign) in enumerate(driver_factors(k)):
        f = kpis.get(factor)
        if f is None or not f.ratio:
            return [(f"{path}[{i}]", f"{factor!r} is not a ratio KPI; expected one of {', '.join(n for n, x in kpis.items() if x.ratio and n != name)}")]
        powers[f.ratio[0]] = powers.get(f.ratio[0], 0) + sign
        powers[f.ratio[1]] = powers.get(f.ratio[1], 0) - sign
    left = {m: p for m, p in powers.items() if p}
    if left:
        return [(path, f"the factors do not multiply out to {k.ratio[0]} / {k.ratio[1]}: {', '.join(f'{m}^{p:+d}' for m, p in sorted(left.items()))} left over")]
    return []


def _parse_number(value: Any) -> Any:
    # "2%" reads as 0.02: ratio KPIs are stored as fractions.
    if isinstance(value, str) and value.strip().endswith("%"):
        return float(value.strip()[:-1]) / 100
    return value


class Restates(_Model):
    """Events of the source are reports: a later report with the same key replaces the earlier one."""

    key: list[str] = Field(min_length=1)  # fields that, with ts (the reporting period), identify a report
    version: str | None = None  # a numeric field ordering restatements; without it the later arrival wins


class Arrival(_Model):
    """How one source topic's data arrives (see README, "Late and restated data").

    ``delay``: how far its event time may trail the fast streams. KPIs that read its
    measures wait for it (published provisional first, final once the source has
    reported past the window's end, or ``delay`` after it at the latest).
    ``lateness``: how far out of order its own events may come (a report batch for
    one period shares one ts, so the default is none).
    ``revise_for``: how long after a window's end its data may still change (a restated
    report, an order imported days later). Such an event revises the window's published
    snapshot (version 3 and on) instead of going to ``late-events``.
    """

    delay: int = 0
    lateness: int = 0
    revise_for: int = 0
    restates: Restates | None = None

    _durations = field_validator("delay", "lateness", "revise_for", mode="before")(lambda v: parse_duration(v))


class FieldSpec(_Model):
    """Where a tracker's message holds one field: paths tried in order (``$.`` from the message
    root inside ``each``), then a constant ``value``; an optional transform; or ``equals``, true
    when the field equals it."""

    path: str | list[str | list[str]] | None = None  # a place that is a list joins its values with ":"
    value: str | bool | float | int | None = None
    transform: Literal[tuple(formats.TRANSFORMS)] | None = None  # type: ignore[valid-type]
    equals: str | bool | float | int | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, (str, list)) else value

    @field_validator("path")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        if isinstance(value, list) and (not value or any(isinstance(p, list) and not p for p in value)):
            raise ValueError("give at least one path (a place that joins paths lists at least one)")
        for place in [value] if isinstance(value, str) else value or []:
            for p in [place] if isinstance(place, str) else place:
                formats.parse_path(p)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        if self.path is None and self.value is None:
            raise ValueError("give path (where the field is) or value (a constant)")
        if self.equals is not None and self.transform is not None:
            raise ValueError("give equals or transform, not both (equals makes the field true or false)")
        return self


class Source(_Model):
    """One source topic: its format, and for ``kpimon`` the event type it carries (see docs/formats.md).

    ``segment``, ``snowplow`` and ``ga4`` are built-in mappings; ``events``, ``fields`` and
    ``defaults`` given with them extend theirs. ``mapping`` declares one in full: ``name`` (the
    field naming the event), ``events`` (name -> event type), ``fields`` (contract field or
    attribute -> where it is; ``ts`` required), optionally ``each`` (an array of events).
    """

    format: Literal[tuple(formats.FORMATS)] = "kpimon"  # type: ignore[valid-type]
    type: str | None = None  # kpimon: the one event type of the topic (None: each event says)
    each: str | None = None
    name: str | list[str] | None = None
    events: dict[str, str] = {}
    fields: dict[str, FieldSpec] = {}
    defaults: dict[str, str | bool | float | int] = {}

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `ad-clicks: click` is a kpimon topic of one type; `tracker: segment` a format's topic.
        if isinstance(value, str):
            return {"format": value} if value in formats.FORMATS and value != "kpimon" else {"type": value}
        return value

    @model_validator(mode="after")
    def _check(self) -> Source:
        if self.type is not None and self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}; expected one of {', '.join(EVENT_TYPES)} or a format: {', '.join(formats.FORMATS)}")
        if self.format == "kpimon":
            if self.each or self.name or self.events or self.fields or self.defaults:
                raise ValueError("the kpimon format takes only type:; each, name, events, fields and defaults describe a tracker format")
            return self
        if self.type is not None:
            raise ValueError(f"type: is for kpimon topics; a {self.format} topic's events are named by its events:")
        for name, etype in self.events.items():
            if etype not in EVENT_TYPES:
                raise ValueError(f"events.{name}: unknown event type {etype!r}; expected one of {', '.join(EVENT_TYPES)}")
        if self.each is not None:
            try:
                formats.parse_path(self.each)
            except ValueError as exc:
                raise ValueError(f"each: {exc}") from None
        if self.name is not None and not self.name:
            raise ValueError("name: give at least one path")
        for p in [self.name] if isinstance(self.name, str) else self.name or []:
            try:
                formats.parse_path(p)
            except ValueError as exc:
                raise ValueError(f"name: {exc}") from None
        if self.format == "mapping":
            missing = [f for f in ("name", "events") if not getattr(self, f)] + ([] if "ts" in self.fields else ["fields.ts"])
            if missing:
                raise ValueError(f"a mapping needs {', '.join(missing)}: which field names the event, which names are which event type, where the event time is")
        return self

    def mapping(self) -> dict[str, Any]:
        """The whole mapping: this declaration over its format's built-in one."""
        fields = {f: spec.model_dump(exclude_none=True) for f, spec in self.fields.items()}
        return formats.merged(self.format, self.each, self.name, self.events, fields, self.defaults)


class Topics(_Model):
    """Kafka topic names. A source topic carries one event type in kpimon's contract, or a
    tracker's format (``segment``, ``snowplow``, ``ga4`` or a declared ``mapping``)."""

    sources: dict[str, Source] = {
        "ad-impressions": Source(type="impression"),
        "ad-clicks": Source(type="click"),
        "page-views": Source(type="pageview"),
        "leads": Source(type="lead"),
        "orders": Source(type="order"),
        "ad-spend": Source(type="spend"),
        "surveys": Source(type="survey"),
    }
    dead_letters: str = "dead-letters"
    late_events: str = "late-events"
    snapshots: str = "kpi-snapshots"
    alerts: str = "kpi-alerts"  # the outbox: alert events are written here before delivery
    silences: str = "kpimon-silences"  # compacted
    feedback: str = "kpimon-feedback"  # compacted: clicks on incidents' Slack buttons, and the incidents shown
    partitions: int = Field(default=4, ge=1, le=1024)

    def types(self) -> dict[str, str]:
        """Source topics that carry one event type (kpimon's contract), topic -> type."""
        return {t: s.type for t, s in self.sources.items() if s.type is not None}

    def tracker_topic(self, message: Any) -> str | None:
        """The tracker-format topic that reads a message found outside Kafka (a file's line), if any.

        The first topic of the format the message looks like; a message that looks like none
        goes to the only tracker topic there is when that is a declared mapping (which cannot be
        recognised).
        """
        found = formats.detect(message)
        if found == "kpimon":
            return None
        trackers = [t for t, s in self.sources.items() if s.format != "kpimon"]
        match = next((t for t in trackers if self.sources[t].format == found), None)
        # Only a declared mapping takes what nothing recognises, and never a row that names a
        # type: that is a broken kpimon event, for the contract to refuse (not to skip).
        if match is None and found is None and len(trackers) == 1 and self.sources[trackers[0]].format == "mapping" \
                and not (isinstance(message, dict) and "type" in message):
            match = trackers[0]
        return match


#: Extra string attributes trackers commonly send; filters and breakdowns may use these.
DEFAULT_ATTRIBUTES = ["device", "country", "region", "landing_page", "browser", "os", "utm_source", "utm_medium", "utm_campaign"]


class Config(_Model):
    """The whole of ``kpimon.yaml``."""

    windows: list[Window] = [Window(size="1m")]
    attributes: list[str] = DEFAULT_ATTRIBUTES  # extra event attributes that filters and breakdowns may name
    allowed_lateness: int = 10_000
    session_timeout: int = 1_800_000
    idle_timeout: int = 10_000
    max_future: int = 3_600_000  # live only: events stamped further ahead of the wall clock are dead-lettered
    breakdowns: list[list[str]] = [["campaign"], ["channel"], []]
    measures: dict[str, Measure]
    kpis: dict[str, Kpi]
    targets: dict[str, Target] = {}
    alerting: Alerting = Alerting()
    topics: Topics = Topics()
    metrics_port: int = Field(default=6066, ge=0, le=65535)  # KPIMON_METRICS_PORT overrides it
    metrics_host: str = Field(default="0.0.0.0", min_length=1)  # bind address of /metrics + /health; KPIMON_METRICS_HOST overrides it
    top_campaigns: int = Field(default=100, ge=0)  # /metrics labels: the top N campaigns by volume, the rest as "other" (0: all)
    arrival: dict[str, Arrival] = {}  # source topic or event type -> how its data arrives; the rest stream live
    # Windows whose KPIs over delayed sources wait for them (default: all). Waiting keeps a
    # window's state for the delay: an hourly report says little about a minute anyway.
    settle_windows: list[str] | None = None

    _durations = field_validator("allowed_lateness", "session_timeout", "idle_timeout", "max_future", mode="before")(
        lambda v: parse_duration(v)
    )

    @model_validator(mode="after")
    def _cross_check(self) -> Config:
        problems: list[tuple[str, str]] = []
        known_fields = _fields_by_type()
        extras = set(self.attributes)
        for name, m in self.measures.items():
            path = f"measures.{name}"
            for i, ref in enumerate(m.refs()):
                if ref not in self.measures or self.measures[ref].add is not None:
                    problems.append((f"{path}.add[{i}]", f"unknown measure {ref!r}; add: sums measures over events, expected one of {', '.join(sorted(n for n, x in self.measures.items() if x.add is None))}"))
            if m.event is None:
                continue
            if m.event not in known_fields:
                problems.append((f"{path}.event", f"unknown event type {m.event!r}; expected one of {', '.join(known_fields)}"))
                continue
            if m.sum is not None and m.sum not in _numeric_fields(m.event):
                problems.append((f"{path}.sum", f"{m.event} events have no numeric field {m.sum!r}; expected one of {', '.join(sorted(_numeric_fields(m.event))) or 'none'}"))
            carried = known_fields[m.event] | extras
            if m.distinct is not None and m.distinct not in carried:
                problems.append((f"{path}.distinct", f"{m.event} events carry no attribute {m.distinct!r}"))
            for attr in m.where:
                if attr not in carried:
                    problems.append((f"{path}.where.{attr}", f"no {m.event} event carries the attribute {attr!r}; expected a field of {m.event} events or one of attributes: {', '.join(self.attributes)}"))
        for name, k in self.kpis.items():
            for field_name in ("ratio", "difference", "over", "change", "measure"):
                value = getattr(k, field_name)
                refs = [value] if isinstance(value, str) else list(value or [])
                for i, ref in enumerate(refs):
                    if ref not in self.measures:
                        where = f"kpis.{name}.{field_name}" + (f"[{i}]" if not isinstance(value, str) else "")
                        problems.append((where, f"unknown measure {ref!r}; expected one of {', '.join(sorted(self.measures))}"))
        for name, k in self.kpis.items():
            problems += _check_drivers(name, k, self.kpis)
        for name, t in self.targets.items():
            if t.drift and t.drift.baseline == "week":
                for w in self.windows:
                    if 7 * 86_400_000 // (w.step or w.size) > 2016:
                        problems.append((f"targets.{name}.drift.baseline", f"a week-ago baseline needs windows of 5m or more (window {w.name} would keep too much history)"))
        if self.alerting.no_data:
            for i, m in enumerate(self.alerting.no_data.measures):
                if m not in self.measures:
                    problems.append((f"alerting.no_data.measures[{i}]", f"unknown measure {m!r}"))
        all_fields = set().union(*known_fields.values()) | extras
        for i, dims in enumerate(self.breakdowns):
            for j, dim in enumerate(dims):
                if dim not in all_fields:
                    problems.append((f"breakdowns[{i}][{j}]", f"no event type carries the attribute {dim!r}; declare it under attributes:"))
        for name in self.targets:
            if name not in self.kpis:
                close = _closest(name, self.kpis)
                hint = f" (did you mean {close!r}?)" if close else ""
                problems.append((f"targets.{name}", f"unknown KPI {name!r}{hint}"))
        problems += self._check_arrival(known_fields, extras)
        for topic, source in self.topics.sources.items():
            if source.format != "kpimon":
                problems += [(f"topics.sources.{topic}", p) for p in formats.problems(source.mapping(), extras)]
            for name in source.fields:
                if name not in formats.CONTRACT_FIELDS and name not in extras:
                    close = _closest(name, formats.CONTRACT_FIELDS)
                    hint = f"did you mean {close!r}? " if close else ""
                    problems.append((f"topics.sources.{topic}.fields.{name}", f"not a field of kpimon's events; {hint}"
                                     f"an attribute for breakdowns must be declared under attributes:"))
        for i, name in enumerate(self.settle_windows or []):
            if name not in [w.name for w in self.windows]:
                problems.append((f"settle_windows[{i}]", f"no window named {name!r}; expected one of {', '.join(w.name for w in self.windows)}"))
        names = [w.name for w in self.windows]
        if len(set(names)) != len(names):
            problems.append(("windows", "window names must be unique"))
        for i, d in enumerate(self.alerting.digests):
            path = f"alerting.digests[{i}]"
            if d.window is not None and d.window not in names:
                problems.append((f"{path}.window", f"no window named {d.window!r}; expected one of {', '.join(names)}"))
            if d.breakdown not in [list(b) for b in self.breakdowns]:
                problems.append((f"{path}.breakdown", f"{d.breakdown} is not one of the breakdowns: {self.breakdowns}"))
            for j, k in enumerate(d.kpis or []):
                if k not in self.kpis:
                    problems.append((f"{path}.kpis[{j}]", f"unknown KPI {k!r}; expected one of {', '.join(self.kpis)}"))
                elif not self.summable(k):
                    problems.append((f"{path}.kpis[{j}]", f"{k} cannot be summed over a day (a change KPI, or over distinct counts: "
                                                          "a visitor in two hours is one visitor in the day)"))
            window = next((w for w in self.windows if w.name == d.window), None) if d.window else min(self.windows, key=lambda w: w.size)
            if window is not None:
                problems += [(f"{path}.window", p) for p in _day_problems(window, d.timezone)]
        if problems:
            raise ConfigError(problems)
        return self

    def _check_arrival(self, known_fields: dict[str, set[str]], extras: set[str]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        by_type: dict[str, tuple[str, Arrival]] = {}
        for key, profile in self.arrival.items():
            path = f"arrival.{key}"
            etype = self.topics.types().get(key) or (key if key in EVENT_TYPES else None)
            if etype is None:
                hint = (f"; {key!r} carries several event types ({self.topics.sources[key].format}): declare the profile per event type"
                        if key in self.topics.sources else "")
                problems.append((path, f"unknown source topic or event type {key!r}; expected one of {', '.join([*self.topics.types(), *EVENT_TYPES])}{hint}"))
                continue
            other = by_type.setdefault(etype, (key, profile))
            if other[1] != profile:
                problems.append((path, f"{other[0]!r} and {key!r} both describe {etype} events: give them the same profile"))
            if profile.revise_for and not profile.delay:
                problems.append((f"{path}.revise_for", "revisions follow a window's final version, which only a source with a delay has: declare delay too"))
            if profile.revise_for:
                for name, m in self.measures.items():
                    if m.event == etype and m.distinct:
                        problems.append((f"{path}.revise_for", f"measure {name!r} counts distinct values of {etype} events, which a revision cannot add to a published window"))
            r = profile.restates
            if r is None:
                continue
            carried = known_fields[etype] | extras | {"ts"}
            for i, f in enumerate(r.key):
                if f not in carried:
                    problems.append((f"{path}.restates.key[{i}]", f"{etype} events carry no field {f!r}"))
            if r.version is not None and r.version not in _numeric_fields(etype) | set(OPTIONAL_NUMBERS.get(etype, ())):
                problems.append((f"{path}.restates.version", f"{etype} events have no numeric field {r.version!r}; expected one of {', '.join(sorted(OPTIONAL_NUMBERS.get(etype, ())))}"))
            for name, m in self.measures.items():
                if m.event == etype and m.distinct:
                    problems.append((f"{path}.restates", f"measure {name!r} counts distinct values of {etype} events, which a replaced report cannot take back"))
        for topic, etype in self.topics.types().items():
            if etype in by_type and by_type[etype][0] in self.topics.sources and topic not in self.arrival:
                problems.append((f"arrival.{topic}", f"{etype} events also come from {by_type[etype][0]!r}: declare the same profile here, or declare it for the event type ({etype}:)"))
        return problems

    def summable(self, kpi: str) -> bool:
        """Whether a KPI over a day is the KPI of the day's summed windows: counts and sums, and not a change."""
        k = self.kpis[kpi]
        if k.change:
            return False
        measures = [m for r in k.refs() if r in self.measures for m in [r, *self.measures[r].refs()]]
        return all(self.measures[m].distinct is None for m in measures if m in self.measures)

    def arrival_of(self, etype: str) -> Arrival | None:
        """The arrival profile of one event type (declared for it, or for a topic carrying it)."""
        for key, profile in self.arrival.items():
            if key == etype or self.topics.types().get(key) == etype:
                return profile
        return None

    @property
    def dimensions(self) -> list[str]:
        """Every attribute named by a breakdown, in first-seen order."""
        seen: dict[str, None] = {}
        for b in self.breakdowns:
            for d in b:
                seen.setdefault(d, None)
        return list(seen)

    def enabled_kpis(self) -> dict[str, Kpi]:
        return {n: k for n, k in self.kpis.items() if k.enabled}


def _fields_by_type() -> dict[str, set[str]]:
    fields = {t: set(TYPE_FIELDS[t]) | set(OPTIONAL_FIELDS.get(t, {})) | set(ALWAYS_PRESENT) for t in EVENT_TYPES}
    fields["session"] = set(SESSION_FIELDS)
    return fields


def _numeric_fields(event: str) -> set[str]:
    if event == "session":
        return {"pageviews", "duration_s"}
    return {f for f in TYPE_FIELDS.get(event, {}) if f in ("cost", "revenue", "amount", "score")}


def _closest(name: str, choices: Any) -> str | None:
    import difflib

    found = difflib.get_close_matches(name, list(choices), n=1)
    return found[0] if found else None


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def from_dict(raw: Any) -> Config:
    """Validate a parsed YAML document; raise ConfigError naming every bad field."""
    if not isinstance(raw, dict):
        raise ConfigError([("", "the config must be a YAML mapping")])
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems: list[tuple[str, str]] = []
        for err in exc.errors():
            ctx_err = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_err, ConfigError):
                problems.extend(ctx_err.problems)
            else:
                msg = err["msg"].removeprefix("Value error, ")
                problems.append((_loc(err["loc"]), msg))
        raise ConfigError(problems) from None


def load(path: str | Path | None = None) -> Config:
    """Load ``kpimon.yaml`` (or the built-in default when no path is given)."""
    if path is None:
        path = Path(__file__).with_name("default.yaml")
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"{path} is not valid YAML: {exc}")]) from None
    return from_dict(raw)
