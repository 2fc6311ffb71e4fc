"""The configuration compiled for the hot path: which measures each event feeds, and how KPIs are computed.

Measures over events live in one flat vector per (window, group): a float per
count or sum, a HyperLogLog sketch per distinct count. Adding two partial
aggregates is element-wise (sum, or register-wise max for sketches), so state is
cheap to store and to combine across partitions. Measures defined as sums of
other measures (``add:``) are computed only when a window closes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from kpi_core import formats, sketch
from kpi_core.config import Config, Filter, Kpi
from kpi_core.events import EVENT_TYPES

EVENTS = "events"
SESSIONS = "sessions"
PHASES = (EVENTS, SESSIONS)
#: A phase's second pass, once the delayed sources its KPIs read have reported (internal:
#: snapshots carry the base phase, and version 2).
COMPLETE = "+complete"
#: A partial that revises a window past its last pass: one stage-1 partition's whole share of
#: the revisable slots (Plan.revisable_slots) of one group.
REVISION = "revision"


def base_phase(phase: str) -> str:
    """The snapshot phase of an internal pass: ``events+complete`` is ``events``."""
    return phase.removesuffix(COMPLETE)


def is_complete(phase: str) -> bool:
    return phase.endswith(COMPLETE)

Predicate = Callable[[dict[str, Any]], bool]
Vector = list[Any]  # float or sketch.Sketch (an HLL sketch) per slot
#: One event's share of a vector: (slot, amount) sums and (slot, register, rank) sketch updates.
Contribution = tuple[list[tuple[int, float]], list[tuple[int, str]]]  # (slot, amount) sums, (slot, value) distincts


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
    """One measure fed by one event type: the vector slot, the field, the filters."""

    index: int
    field: str | None  # None: count the event
    distinct: bool
    filters: tuple[Predicate, ...]
    attrs: tuple[str, ...] = ()  # the fields the filters read


@dataclass(frozen=True, slots=True)
class KpiPlan:
    name: str
    kpi: Kpi
    phase: str
    waits: frozenset[str] = frozenset()  # delayed event types its measures read (config.arrival)

    def value(self, m: dict[str, float], previous: dict[str, float] | None) -> float | None:
        """The KPI from a window's measures. None when its denominator is zero."""
        k = self.kpi
        if k.ratio:
            num, den = m[k.ratio[0]], m[k.ratio[1]]
        elif k.difference:
            num, den = m[k.difference[0]] - m[k.difference[1]], m[str(k.over)]
        elif k.change:
            prev = (previous or {}).get(k.change, 0.0)
            num, den = m[k.change] - prev, prev
        else:
            return m[str(k.measure)] * k.scale
        return num / den * k.scale if den else None

    def volume(self, m: dict[str, float], previous: dict[str, float] | None) -> tuple[float, str, float, str]:
        """What the value rests on: (numerator, its name, denominator, its name)."""
        k = self.kpi
        if k.ratio:
            return m[k.ratio[0]], k.ratio[0], m[k.ratio[1]], k.ratio[1]
        if k.difference:
            a, b = k.difference
            return m[a] - m[b], f"{a} − {b}", m[str(k.over)], str(k.over)
        if k.change:
            prev = (previous or {}).get(k.change, 0.0)
            return m[k.change], k.change, prev, f"previous {k.change}"
        return m[str(k.measure)], str(k.measure), 1.0, "window"


_GROUPS_CACHE = 100_000  # distinct breakdown-value combinations remembered


class Plan:
    """A validated Config turned into index tables for fast aggregation."""

    def __init__(self, config: Config) -> None:
        self.config = config
        measures = config.measures
        self.slot_names = [n for n, m in measures.items() if m.add is None]
        self.size = len(self.slot_names)
        index = {name: i for i, name in enumerate(self.slot_names)}
        self.distinct_slots = frozenset(i for i, n in enumerate(self.slot_names) if measures[n].distinct)
        self.feeds: dict[str, tuple[Feed, ...]] = {}
        for name in self.slot_names:
            m = measures[name]
            event = str(m.event)
            field = m.distinct or m.sum
            feed = Feed(index[name], field, bool(m.distinct), tuple(_predicate(a, f) for a, f in m.where.items()), tuple(m.where))
            self.feeds[event] = (*self.feeds.get(event, ()), feed)
        self.derived = {n: list(m.add or []) for n, m in measures.items() if m.add is not None}
        self.session_measures = frozenset(n for n in measures if self._from_sessions(n))
        # Arrival profiles by event type: where data comes late, KPIs reading it wait for it.
        self.arrival = {t: a for t in EVENT_TYPES if (a := config.arrival_of(t)) is not None}
        self.delayed = frozenset(t for t, a in self.arrival.items() if a.delay > 0)
        self.restated = {t: a.restates for t, a in self.arrival.items() if a.restates is not None}
        self.type_of_topic = config.topics.types()
        # How each source topic's messages become events (kpimon's contract or a tracker format).
        self.decoders = {t: formats.decoder(s.format, s.type, None if s.format == "kpimon" else s.mapping())
                         for t, s in config.topics.sources.items()}
        # The event types each source topic carries: a tracker's topic carries several, and its
        # progress is then theirs too (less their lateness).
        self.types_of_topic = {t: d.types for t, d in self.decoders.items()}
        self.kpis: list[KpiPlan] = []
        for name, k in config.enabled_kpis().items():
            phase = SESSIONS if any(r in self.session_measures for r in k.refs()) else EVENTS
            waits = frozenset(t for r in k.refs() for t in self._event_types(r)) & self.delayed
            self.kpis.append(KpiPlan(name, k, phase, waits))
        self.kpi_by_name = {k.name: k for k in self.kpis}
        self.phases = tuple(p for p in PHASES if any(k.phase == p for k in self.kpis)) or (EVENTS,)
        #: What each phase's second pass waits for (only phases with KPIs over delayed data have one).
        self.waits: dict[str, frozenset[str]] = {}
        for p in self.phases:
            types = frozenset().union(*(k.waits for k in self.kpis if k.phase == p))
            if types:
                self.waits[p + COMPLETE] = types
        self.passes: tuple[str, ...] = (*self.phases, *self.waits)
        #: Windows (indices) whose KPIs over delayed data wait for it; in the others they stay provisional.
        settle = config.settle_windows
        self.settles = frozenset(i for i, w in enumerate(config.windows) if settle is None or w.name in settle)
        #: Measures that delayed sources feed (a second pass changes only these).
        self.delayed_measures = frozenset(n for n in measures if self._event_types(n) & self.delayed)
        #: Revisions (``revise_for``): delayed types whose events may still change a window after
        #: its final pass, how long after its end; and the vector slots they feed (sums and counts).
        self.revise_for = {t: self.arrival[t].revise_for for t in self.delayed if self.arrival[t].revise_for > 0}
        self.revisable_slots = tuple(sorted({f.index for t in self.revise_for for f in self.feeds.get(t, ())}))
        self.revision_pos = {slot: j for j, slot in enumerate(self.revisable_slots)}
        #: The second passes whose KPIs a revision can change.
        self.revised_passes = tuple(p for p, types in self.waits.items() if types & self.revise_for.keys())
        #: Per window: how long after its end it may be revised (0: never; only settle windows have a final pass).
        self.window_revise = [
            max((self.revise_for.get(t, 0) for p in self.revised_passes for t in self.waits[p]), default=0) if i in self.settles else 0
            for i in range(len(config.windows))
        ]
        self.has_change = any(k.kpi.change for k in self.kpis)
        self.change_measures = tuple(sorted({str(k.kpi.change) for k in self.kpis if k.kpi.change}))
        self.breakdowns: list[tuple[str, ...]] = [tuple(b) for b in config.breakdowns]
        self._dims = tuple(sorted({d for b in self.breakdowns for d in b}))
        self._report_fields: dict[str, tuple[str, ...]] = {}
        self._groups: dict[tuple[Any, ...], list[tuple[int, tuple[str, ...]]]] = {}
        self.windows = config.windows
        self.lateness = config.allowed_lateness
        self.session_timeout = config.session_timeout
        self.needs_sessions = "session" in self.feeds
        # Types whose every measure just counts the event: their contribution is always the
        # same object, which the columnar path in kpi_core.aggregate turns into a row once.
        # Per-snapshot lookups, computed once: KPIs by phase, measure names in config order
        # (without the session measures before sessions are final), provisional KPI sets.
        self._kpis_of: dict[str, tuple[KpiPlan, ...]] = {p: tuple(k for k in self.kpis if k.phase == p) for p in PHASES}
        named = [n for n in config.measures if n in self.slot_names or n in self.derived]
        self._measure_order = (tuple(n for n in named if n not in self.session_measures), tuple(named))
        self._waiting: dict[tuple[str, frozenset[str]], frozenset[str]] = {}
        self._distinct_order = tuple(sorted(self.distinct_slots))
        self._source_of: dict[str, str] = {}
        self._constant: dict[str, Contribution] = {
            t: ([(f.index, 1.0) for f in feeds], []) for t, feeds in self.feeds.items()
            if all(f.field is None and not f.filters and not f.distinct for f in feeds)
        }

    def _from_sessions(self, name: str) -> bool:
        m = self.config.measures[name]
        if m.add is not None:
            return any(self._from_sessions(r) for r in m.add)
        return m.event == "session"

    def first_pass_horizons(self, horizon: int) -> dict[str, int]:
        """Each phase's first-pass horizon, from the fast one: sessions close a session timeout later.

        Also how a single stored horizon (state from before passes existed) reads.
        """
        out = {EVENTS: horizon, SESSIONS: horizon - self.session_timeout}
        return {p: h for p, h in out.items() if p == EVENTS or p in self.passes}

    def _event_types(self, name: str) -> set[str]:
        m = self.config.measures[name]
        if m.add is not None:
            return {t for r in m.add for t in self._event_types(r)}
        return {"pageview" if m.event == "session" else str(m.event)}

    def report_fields(self, etype: str) -> tuple[str, ...]:
        """What a stored report keeps of its event: the fields its groups and measures read."""
        keep = self._report_fields.get(etype)
        if keep is None:
            keep = self._report_fields[etype] = tuple(sorted({*self._dims, *(x for f in self.feeds.get(etype, ()) for x in (f.field, *f.attrs) if x)}))
        return keep

    def report_values(self, etype: str, data: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(data.get(k) for k in self.report_fields(etype))

    def report_data(self, etype: str, values: tuple[Any, ...]) -> dict[str, Any]:
        return {k: v for k, v in zip(self.report_fields(etype), values) if v is not None}

    def source_type(self, source: str) -> str | None:
        """The event type of a source partition (``topic:partition``), if its topic carries one type."""
        return self.type_of_topic.get(source.rpartition(":")[0] or source)

    def source_types(self, source: str) -> frozenset[str]:
        """Every event type a source partition may carry (a tracker's topic carries several)."""
        return self.types_of_topic.get(source.rpartition(":")[0] or source, frozenset())

    def is_mixed(self, source: str) -> bool:
        """A source of several event types: its progress moves the watermark even when it carries a delayed one."""
        return len(self.source_types(source)) > 1

    def source_of(self, event_type: str) -> str:
        """A source name for events read without Kafka (replay): the first topic of the type, partition 0."""
        source = self._source_of.get(event_type)
        if source is None:
            topic = next((t for t, e in self.type_of_topic.items() if e == event_type), event_type)
            source = self._source_of[event_type] = f"{topic}:0"
        return source

    # -- vectors -----------------------------------------------------------------

    def new_vector(self) -> Vector:
        out: Vector = [0.0] * self.size
        for i in self._distinct_order:
            out[i] = sketch.new()
        return out

    def add(self, vector: Vector, event_type: str, data: dict[str, Any]) -> bool:
        """Add one event's contributions to a measure vector; True if it fed any measure."""
        contribution = self.contribution(event_type, data)
        if contribution is None:
            return False
        self.add_contribution(vector, contribution)
        return True

    def contribution(self, event_type: str, data: dict[str, Any]) -> Contribution | None:
        """What one event adds to any vector, or None if it feeds no measure.

        Computed once per event and added to each of its cells (one per window and
        breakdown), so filters and amounts are not redone per cell. Not to be changed:
        count-only types share one.
        """
        constant = self._constant.get(event_type)
        if constant is not None:
            return constant
        sums: list[tuple[int, float]] = []
        distinct: list[tuple[int, str]] = []
        for feed in self.feeds.get(event_type, ()):
            if feed.filters and not all(p(data) for p in feed.filters):
                continue
            if feed.distinct:
                value = data.get(feed.field or "")
                if value is None:
                    continue
                distinct.append((feed.index, str(value)))
            else:
                sums.append((feed.index, 1.0 if feed.field is None else float(data[feed.field])))
        return (sums, distinct) if sums or distinct else None

    @staticmethod
    def add_contribution(vector: Vector, contribution: Contribution) -> None:
        sums, distinct = contribution
        for i, amount in sums:
            vector[i] += amount
        for i, value in distinct:
            vector[i].add(value)

    def merge(self, into: Vector, other: Vector) -> None:
        for i, x in enumerate(other):
            if i in self.distinct_slots:
                into[i].merge(x)
            else:
                into[i] += x

    def copy(self, vector: Vector) -> Vector:
        out = list(vector)
        for i in self._distinct_order:
            out[i] = out[i].copy()
        return out

    def encode(self, vector: Vector) -> list[Any]:
        """A JSON-safe form of a vector, for state and the wire."""
        return [x.encode() if i in self.distinct_slots else x for i, x in enumerate(vector)]

    def decode(self, raw: list[Any]) -> Vector:
        return [sketch.decode(x) if i in self.distinct_slots else x for i, x in enumerate(raw)]

    def groups(self, data: dict[str, Any]) -> list[tuple[int, tuple[str, ...]]]:
        """The (breakdown index, breakdown value) pairs an event belongs to.

        Memoised on the event's breakdown values: a campaign's events repeat the same
        few combinations, and building the tuples was 6% of a worker's CPU.
        """
        key = tuple(data.get(d) for d in self._dims)
        found = self._groups.get(key)
        if found is None:
            if len(self._groups) >= _GROUPS_CACHE:
                self._groups.clear()  # bounded; refills with what is current
            found = self._groups[key] = [
                (bi, tuple(str(data.get(d, "none")) for d in dims)) for bi, dims in enumerate(self.breakdowns)
            ]
        return found

    # -- results -----------------------------------------------------------------

    def measures(self, vector: Vector, phase: str) -> dict[str, float]:
        """Named measures final in this phase (session measures only once sessions are final)."""
        values = list(vector)
        for i in self._distinct_order:
            values[i] = values[i].estimate()
        return self._named(values, phase)

    def slot_values(self, measures: dict[str, float]) -> list[float]:
        """A published window's stored slots (what ``revised_measures`` starts from)."""
        return [measures.get(n, 0.0) for n in self.slot_names]

    def revised_measures(self, slots: list[float], revised: list[float], phase: str) -> dict[str, float]:
        """A published window's measures with its revisable slots replaced by ``revised``
        (in ``revisable_slots`` order); derived measures recomputed."""
        values = list(slots)
        for i, x in zip(self.revisable_slots, revised):
            values[i] = x
        return self._named(values, phase)

    def _named(self, values: list[float], phase: str) -> dict[str, float]:
        """Slot values as named measures, derived ones added, in config order, for this phase."""
        out = dict(zip(self.slot_names, values))
        for name, parts in self.derived.items():
            out[name] = sum(out[p] for p in parts)
        return {n: out[n] for n in self._measure_order[base_phase(phase) == SESSIONS]}

    def kpi_values(self, measures: dict[str, float], phase: str, previous: dict[str, float] | None = None) -> dict[str, float | None]:
        """KPIs reported in this phase. A zero denominator makes the KPI missing (None)."""
        return {k.name: k.value(measures, previous) for k in self._kpis_of.get(base_phase(phase), ())}

    def results(self, measures: dict[str, float], phase: str, previous: dict[str, float] | None = None,
                stale: set[str] | frozenset[str] = frozenset()) -> tuple[dict[str, float | None], dict[str, float | None]]:
        """(final, provisional) KPI values of one pass.

        The first pass of a phase leaves the KPIs over delayed data provisional; its
        second pass (``+complete``) has them final, except those reading a ``stale``
        type (one whose delay ran out before it reported): a missing spend report must
        not read as a fall in cost.
        """
        values = self.kpi_values(measures, phase, previous)
        if not self.delayed or (is_complete(phase) and not stale):
            return values, {}
        key = (phase, frozenset(stale) if is_complete(phase) else frozenset())
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = frozenset(
                k.name for k in self.kpis if k.name in values and (k.waits & stale if is_complete(phase) else k.waits))
        if not waiting:
            return values, {}
        return ({n: v for n, v in values.items() if n not in waiting},
                {n: v for n, v in values.items() if n in waiting})

    def waiting_for(self, phase: str, stale: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """The delayed types a pass's provisional KPIs still wait for."""
        if is_complete(phase):
            return sorted(self.waits.get(phase, frozenset()) & stale)
        return sorted(self.waits.get(phase + COMPLETE, frozenset()))
