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

from kpi_core.errors import ConfigError
from kpi_core.events import ALWAYS_PRESENT, EVENT_TYPES, SESSION_FIELDS, TYPE_FIELDS

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
    in_: list[str] | None = Field(default=None, alias="in")
    prefix: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Filter:
        if sum(x is not None for x in (self.eq, self.in_, self.prefix)) != 1:
            raise ValueError("give exactly one of eq, in, prefix")
        return self


class Measure(_Model):
    """A windowed aggregate over one event type: a count, or the sum of a numeric field."""

    event: str
    sum: str | None = None
    where: dict[str, Filter] = {}

    @field_validator("where", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `where: {page: /checkout}` is shorthand for `where: {page: {eq: /checkout}}`.
        if isinstance(value, dict):
            return {k: v if isinstance(v, dict) else {"eq": v} for k, v in value.items()}
        return value


class Kpi(_Model):
    """A KPI: ``ratio: [numerator, denominator]`` of two measures."""

    ratio: tuple[str, str]
    direction: Literal["higher", "lower"] = "higher"
    unit: Literal["ratio", "percent", "currency", "seconds", "count"] = "ratio"
    enabled: bool = True


class Target(_Model):
    """A KPI's target value, with overrides per breakdown value (exact or glob)."""

    value: float | None = None
    overrides: dict[str, dict[str, float]] = {}  # dimension -> pattern -> value
    min_denominator: float = 0.0  # below this volume a window never breaches: 1 click in 3 impressions says nothing

    @field_validator("value", mode="before")
    @classmethod
    def _percent(cls, value: Any) -> Any:
        return _parse_number(value)

    @field_validator("overrides", mode="before")
    @classmethod
    def _percent_overrides(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {d: {p: _parse_number(v) for p, v in (pats or {}).items()} for d, pats in value.items()}
        return value

    def for_group(self, group: dict[str, str]) -> float | None:
        """The target for one breakdown value: the first exact match, then globs, then the default."""
        for dim, patterns in self.overrides.items():
            value = group.get(dim)
            if value is None:
                continue
            if value in patterns:
                return patterns[value]
            for pattern, target in patterns.items():
                if fnmatch.fnmatchcase(value, pattern):
                    return target
        return self.value


def _parse_number(value: Any) -> Any:
    # "2%" reads as 0.02: ratio KPIs are stored as fractions.
    if isinstance(value, str) and value.strip().endswith("%"):
        return float(value.strip()[:-1]) / 100
    return value


class Topics(_Model):
    """Kafka topic names. Each source topic implies an event type."""

    sources: dict[str, str] = {
        "ad-impressions": "impression",
        "ad-clicks": "click",
        "page-views": "pageview",
        "leads": "lead",
        "orders": "order",
        "ad-spend": "spend",
        "surveys": "survey",
    }
    dead_letters: str = "dead-letters"
    late_events: str = "late-events"
    snapshots: str = "kpi-snapshots"
    partitions: int = Field(default=4, ge=1, le=1024)


class Config(_Model):
    """The whole of ``kpimon.yaml``."""

    windows: list[Window] = [Window(size=60_000)]
    allowed_lateness: int = 10_000
    session_timeout: int = 1_800_000
    idle_timeout: int = 10_000
    breakdowns: list[list[str]] = [["campaign"], ["channel"], []]
    measures: dict[str, Measure]
    kpis: dict[str, Kpi]
    targets: dict[str, Target] = {}
    topics: Topics = Topics()
    metrics_port: int = Field(default=6066, ge=0, le=65535)
    top_campaigns: int = Field(default=0, ge=0)  # reserved: label bounding arrives with the reliability work

    _durations = field_validator("allowed_lateness", "session_timeout", "idle_timeout", mode="before")(
        lambda v: parse_duration(v)
    )

    @model_validator(mode="after")
    def _cross_check(self) -> Config:
        problems: list[tuple[str, str]] = []
        known_fields = _fields_by_type()
        for name, m in self.measures.items():
            path = f"measures.{name}"
            if m.event not in known_fields:
                problems.append((f"{path}.event", f"unknown event type {m.event!r}; expected one of {', '.join(known_fields)}"))
                continue
            if m.sum is not None and m.sum not in _numeric_fields(m.event):
                problems.append((f"{path}.sum", f"{m.event} events have no numeric field {m.sum!r}"))
            for attr in m.where:
                if not any(attr in fields or fields is None for fields in known_fields.values()):
                    problems.append((f"{path}.where.{attr}", f"no event type carries the attribute {attr!r}"))
        for name, k in self.kpis.items():
            for i, ref in enumerate(k.ratio):
                if ref not in self.measures:
                    problems.append((f"kpis.{name}.ratio[{i}]", f"unknown measure {ref!r}; expected one of {', '.join(sorted(self.measures))}"))
        for name in self.targets:
            if name not in self.kpis:
                close = _closest(name, self.kpis)
                hint = f" (did you mean {close!r}?)" if close else ""
                problems.append((f"targets.{name}", f"unknown KPI {name!r}{hint}"))
        names = [w.name for w in self.windows]
        if len(set(names)) != len(names):
            problems.append(("windows", "window names must be unique"))
        if problems:
            raise ConfigError(problems)
        return self

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


def _fields_by_type() -> dict[str, set[str] | None]:
    # Extra string attributes may appear on any event type, so the filter check only
    # rejects names that collide with nothing at all; see _cross_check.
    fields: dict[str, set[str] | None] = {t: set(TYPE_FIELDS[t]) | set(ALWAYS_PRESENT) for t in EVENT_TYPES}
    fields["session"] = set(SESSION_FIELDS)
    return fields


def _numeric_fields(event: str) -> set[str]:
    if event == "session":
        return {"pageviews", "bounced"}
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
