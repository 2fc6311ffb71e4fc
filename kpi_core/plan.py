"""The configuration compiled for the hot path: which measures each event feeds, and how KPIs are computed.

Measures are kept as one flat vector of floats per (window, group), so adding
two partial aggregates is element-wise addition and state is cheap to store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from kpi_core.config import Config, Filter, Kpi

EVENTS = "events"
SESSIONS = "sessions"
PHASES = (EVENTS, SESSIONS)

Predicate = Callable[[dict[str, Any]], bool]


def _predicate(attr: str, f: Filter) -> Predicate:
    if f.eq is not None:
        want = f.eq
        return lambda d: d.get(attr) == want
    if f.in_ is not None:
        allowed = frozenset(f.in_)
        return lambda d: d.get(attr) in allowed
    prefix = f.prefix or ""
    return lambda d: isinstance(d.get(attr), str) and d[attr].startswith(prefix)


@dataclass(frozen=True, slots=True)
class Feed:
    """One measure fed by one event type: the vector slot, the summed field, the filters."""

    index: int
    field: str | None  # None: count the event
    filters: tuple[Predicate, ...]


@dataclass(frozen=True, slots=True)
class KpiPlan:
    name: str
    kpi: Kpi
    num: int  # vector index of the numerator
    den: int
    phase: str


class Plan:
    """A validated Config turned into index tables for fast aggregation."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.measure_names: list[str] = list(config.measures)
        self.size = len(self.measure_names)
        index = {name: i for i, name in enumerate(self.measure_names)}
        self.session_measures = frozenset(i for i, n in enumerate(self.measure_names) if config.measures[n].event == "session")
        self.feeds: dict[str, tuple[Feed, ...]] = {}
        for name, m in config.measures.items():
            feed = Feed(index[name], m.sum, tuple(_predicate(a, f) for a, f in m.where.items()))
            self.feeds[m.event] = (*self.feeds.get(m.event, ()), feed)
        self.kpis: list[KpiPlan] = []
        for name, k in config.enabled_kpis().items():
            num, den = index[k.ratio[0]], index[k.ratio[1]]
            phase = SESSIONS if {num, den} & self.session_measures else EVENTS
            self.kpis.append(KpiPlan(name, k, num, den, phase))
        self.phases = tuple(p for p in PHASES if any(k.phase == p for k in self.kpis)) or (EVENTS,)
        self.breakdowns: list[tuple[str, ...]] = [tuple(b) for b in config.breakdowns]
        self.windows = config.windows
        self.lateness = config.allowed_lateness
        self.session_timeout = config.session_timeout
        self.needs_sessions = "session" in self.feeds

    def delay(self, phase: str) -> int:
        """How long after a window's end (plus lateness) the phase closes."""
        return self.session_timeout if phase == SESSIONS else 0

    def add(self, vector: list[float], event_type: str, data: dict[str, Any]) -> bool:
        """Add one event's contributions to a measure vector; True if it fed any measure."""
        fed = False
        for feed in self.feeds.get(event_type, ()):
            if feed.filters and not all(p(data) for p in feed.filters):
                continue
            vector[feed.index] += 1.0 if feed.field is None else float(data[feed.field])
            fed = True
        return fed

    def groups(self, data: dict[str, Any]) -> list[tuple[int, tuple[str, ...]]]:
        """The (breakdown index, breakdown value) pairs an event belongs to."""
        return [(bi, tuple(str(data.get(d, "none")) for d in dims)) for bi, dims in enumerate(self.breakdowns)]

    def measures(self, vector: list[float], phase: str) -> dict[str, float]:
        """Named measures final in this phase (session measures only once sessions are final)."""
        return {
            n: vector[i] for i, n in enumerate(self.measure_names) if phase == SESSIONS or i not in self.session_measures
        }

    def kpi_values(self, vector: list[float], phase: str) -> dict[str, float | None]:
        """KPIs reported in this phase. A zero denominator makes the KPI missing (None)."""
        out: dict[str, float | None] = {}
        for k in self.kpis:
            if k.phase == phase:
                den = vector[k.den]
                out[k.name] = vector[k.num] / den if den else None
        return out
