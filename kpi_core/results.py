"""What a closed window produces: snapshots of KPI values, and how outputs format them.

These records are the contract between the core and every output adapter: the
``kpi-snapshots`` topic, the Prometheus exporter, replay's printer and ``alerts``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=4096)  # every group of a window formats the same start and end
def iso(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC, the form every output uses."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def breakdown_name(dims: tuple[str, ...]) -> str:
    """The label for a breakdown: its dimensions joined by commas, or ``total``."""
    return ",".join(dims) if dims else "total"


@dataclass(slots=True)
class Snapshot:
    """One closed window of one breakdown group: raw measures and the KPIs computed from them."""

    window: str  # the window's name, e.g. "1m"
    start: int  # epoch ms, inclusive
    end: int  # epoch ms, exclusive
    dims: tuple[str, ...]  # the breakdown, e.g. ("campaign",); () is the global total
    group: dict[str, str]  # the breakdown value, e.g. {"campaign": "spring-sale"}
    phase: str  # "events", or "sessions" for KPIs that wait for sessions to finish
    measures: dict[str, float]
    kpis: dict[str, float | None]  # None: the denominator was zero, so the KPI is missing
    previous: dict[str, float] | None = None  # the previous window's measures, for change KPIs
    # Publications of one key are numbered from 1. A window published again after a
    # crash carries the same key, version and values: consumers keep one per (key, version).
    version: int = 1
    # KPIs over delayed sources (config.arrival) before those have reported: values so
    # far, not alerted on. Version 2 of the same key has them final.
    provisional: dict[str, float | None] = field(default_factory=dict)
    waiting_for: list[str] = field(default_factory=list)  # the delayed event types still to report
    # Version 3 and on: a revision (config.arrival revise_for) of a published window; what
    # changed, measure -> [before, after].
    revised: dict[str, list[float]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A stable identity: the same window and group always give the same key."""
        parts = [self.window, str(self.start), self.phase, breakdown_name(self.dims)]
        parts += [self.group[d] for d in self.dims]
        return "|".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "version": self.version,
            "window": self.window,
            "start": iso(self.start),
            "end": iso(self.end),
            "breakdown": breakdown_name(self.dims),
            "group": self.group,
            "phase": self.phase,
            "measures": self.measures,
            "kpis": self.kpis,
            "provisional": self.provisional,
            "waiting_for": self.waiting_for,
            **({"revised": self.revised} if self.revised else {}),
        }


def format_value(value: float, unit: str) -> str:
    """A KPI value for people: percent units as %, currency with 2 decimals."""
    if unit == "percent":
        return f"{value * 100:.2f}%"
    if unit == "currency":
        return f"{value:,.2f}"
    if unit == "seconds":
        return f"{value:.1f}s"
    if unit == "count":
        return f"{value:,.0f}"
    return f"{value:.4g}"
