"""Stage 1: pre-aggregate one partition's events into per-window, per-group measure vectors.

Each partition of the internal events topic owns one ``PartitionAggregator``. It
assigns events to event-time windows, tracks page-view sessions, and closes
windows when its watermark (minus the allowed lateness) passes their end. What a
closed window yields is a *partial*: this partition's share of each group's
measures, which ``kpi_core.combine`` adds up across partitions.

Late data (``config.arrival``): sources with a ``delay`` do not hold the
watermark. Their own progress (``slow``) decides a phase's second pass
(``events+complete``), which waits for them up to ``delay``; their events count
until that pass closes. Restated reports replace the earlier report of their key.
After a window's last pass, a type with ``revise_for`` still changes it: the
window's revisable slots stay (``settled``), and each change is sent again as
this partition's whole share of those slots (a *revision*, phase ``REVISION``),
which stage 2 puts in place of the share it had.

Exactly-once bookkeeping: every stored cell remembers, per source partition, the
highest source offset it has absorbed (``marks``). Cells and marks are stored
together in one value, so after a crash the restored state and the replayed
input agree: an event whose offset a cell has already absorbed is skipped.
"""

from __future__ import annotations

import bisect
import math
from array import array
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import orjson

from kpi_core.plan import EVENTS, REVISION, SESSIONS, Plan, base_phase, is_complete
from kpi_core.state import Change, drain
from kpi_core.windows import Watermark, window_starts

#: An event as carried between stages: (source, source offset, type, ts, data).
Routed = tuple[str, int, str, int, dict[str, Any]]

NEVER = -(2**62)  # horizon before any watermark
FOREVER = 2**62  # horizon that closes everything (end of a replay)


@dataclass(slots=True)
class Partial:
    """One partition's measures for one window, phase and group."""

    window: int  # index into config.windows
    start: int
    phase: str
    breakdown: int  # index into config.breakdowns
    group: tuple[str, ...]
    vector: list[Any]  # see Plan: floats, and sketches for distinct counts
    stale: tuple[str, ...] = ()  # second pass: delayed types that had not reported when it closed (their delay ran out)


class Cell:
    __slots__ = ("v", "m")

    def __init__(self, v: list[float], m: dict[str, int]) -> None:
        self.v = v
        self.m = m  # source -> highest offset absorbed


class Session:
    """One visit: the event times of its page views, and the first page view's data."""

    __slots__ = ("times", "data")

    def __init__(self, times: list[int], data: dict[str, Any]) -> None:
        self.times = times  # sorted
        self.data = data

    @property
    def first(self) -> int:
        return self.times[0]

    @property
    def last(self) -> int:
        return self.times[-1]

    def record(self, cutoff: int) -> dict[str, Any]:
        """The virtual ``session`` event measures see (docs/events.md), as of event time ``cutoff``.

        Counting only page views up to the cutoff makes the record independent of
        how far past it the input happened to be read, so live and replay agree.
        """
        views = [t for t in self.times if t <= cutoff]
        out = {k: v for k, v in self.data.items() if isinstance(v, (str, bool))}
        out.update(bounced=len(views) == 1, pageviews=len(views), duration_s=(views[-1] - views[0]) / 1000)
        return out


class SessionGroup:
    """All sessions seen for one (campaign, session_id), with the marks that dedup replays."""

    __slots__ = ("sessions", "m")

    def __init__(self, sessions: list[Session], m: dict[str, int]) -> None:
        self.sessions = sessions
        self.m = m


class Report:
    """The report a restated key counts as: its version, event time and data (to take it back).

    ``values`` are only the fields that decide its groups and measures, in
    ``Plan.report_fields`` order: reports live as long as their windows can be revised.
    """

    __slots__ = ("version", "ts", "values")

    def __init__(self, version: float, ts: int, values: tuple[Any, ...]) -> None:
        self.version = version
        self.ts = ts
        self.values = values


class _Columns:
    """Events collected for the columnar path, and the code that adds them to their cells.

    Per event, ``add`` only appends its time, source, offset, groups and contribution.
    ``flush`` then works per window and breakdown with NumPy: each event's cell is found
    by a group-by over (window start, group), every sum is added with ``np.add.at``
    (unbuffered, in event order: each cell's floats come out bit for bit as if added one
    event at a time), and each cell's marks become the highest offset per source it took.
    Python then touches each *cell* once, not each (event, cell) pair; at 1,000 campaigns
    a batch of 10,000 events lands in a few thousand cells, not 80,000.
    Distinct counts are still added per value (a sketch update is one C++ call).
    """

    __slots__ = ("agg", "ts", "src", "off", "combo", "contrib", "_combos", "_combo_of", "_sources")

    def __init__(self, agg: PartitionAggregator) -> None:
        self.agg = agg
        self._combos: list[list[tuple[int, tuple[str, ...]]]] = []  # Plan.groups lists seen, by local id
        self._combo_of: dict[int, int] = {}  # id() of a Plan.groups list (kept alive in _combos) -> local id
        self._sources: dict[str, int] = {}
        self._clear()

    def _clear(self) -> None:
        self.ts: list[int] = []
        self.src: list[int] = []
        self.off: list[int] = []
        self.combo: list[int] = []
        self.contrib: list[Any] = []

    def add(self, src: str, off: int, ts: int, groups: list[tuple[int, tuple[str, ...]]], contribution: Any) -> None:
        combo = self._combo_of.get(id(groups))
        if combo is None:
            combo = self._combo_of[id(groups)] = len(self._combos)
            self._combos.append(groups)
        si = self._sources.get(src)
        if si is None:
            si = self._sources[src] = len(self._sources)
        self.ts.append(ts)
        self.src.append(si)
        self.off.append(off)
        self.combo.append(combo)
        self.contrib.append(contribution)

    def flush(self) -> None:
        """Add every collected event to its cells, then start empty."""
        n = len(self.ts)
        if not n:
            return
        agg = self.agg
        plan, cells, dirty = agg.plan, agg.cells, agg._dirty
        # The sum slots this batch feeds, and each event's amounts in them (one row per event).
        slots = sorted({i for c in self.contrib for i, _ in c[0]})
        col = {i: j for j, i in enumerate(slots)}
        rows: dict[int, list[float]] = {}
        matrix = []
        distinct = []  # (event, slot, value)
        for e, c in enumerate(self.contrib):
            row = rows.get(id(c))
            if row is None:
                row = [0.0] * len(slots)
                for i, amount in c[0]:
                    row[col[i]] += amount
                if c[1]:
                    distinct += [(e, i, value) for i, value in c[1]]
                else:
                    rows[id(c)] = row  # the same object is the same contribution (Plan.contribution caches count-only ones)
            matrix.append(row)
        amounts = np.array(matrix, dtype=np.float64).reshape(n, len(slots)).T.copy()  # a row per slot
        ts = np.array(self.ts, dtype=np.int64)
        src = np.array(self.src, dtype=np.int64)
        off = np.array(self.off, dtype=np.int64)
        combo = np.array(self.combo, dtype=np.int64)
        sources = list(self._sources)
        # Per breakdown, each combo's group as a local id, and the group behind each id.
        group_ids: list[np.ndarray] = []
        group_of: list[list[tuple[int, tuple[str, ...]]]] = []
        for bi in range(len(plan.breakdowns)):
            ids: dict[tuple[int, tuple[str, ...]], int] = {}
            group_ids.append(np.array([ids.setdefault(groups[bi], len(ids)) for groups in self._combos], dtype=np.int64))
            group_of.append(list(ids))
        for wi, (size, step) in enumerate(agg._windows):
            last = ts - ts % step
            # Hopping windows: one (event, start) pair per window holding the event
            # (windows.window_starts, for a whole column at once).
            k = size // step
            events = np.repeat(np.arange(n), k) if k > 1 else np.arange(n)
            starts = (np.repeat(last, k) + np.tile(np.arange(k) * step - size + step, n)) if k > 1 else last
            start_values, start_index = np.unique(starts, return_inverse=True)
            for bi in range(len(plan.breakdowns)):
                gids = group_ids[bi][combo[events]]
                width = len(group_of[bi])
                key = start_index * width + gids
                uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
                order = np.argsort(first, kind="stable")  # cells are created in the order events reach them
                rank = np.empty_like(order)
                rank[order] = np.arange(len(order))
                inverse = rank[inverse]
                touched = []
                for u in uniq[order].tolist():
                    start = int(start_values[u // width])
                    g = group_of[bi][u % width]
                    window = cells.get((wi, start))
                    if window is None:
                        window = cells[(wi, start)] = {}
                    cell = window.get(g)
                    if cell is None:
                        cell = window[g] = Cell(plan.new_vector(), {})
                    touched.append(cell)
                    dirty.add(("c", wi, start, g[0], g[1]))
                if slots:
                    # One contiguous row per slot: NumPy's fast 1-d ``add.at`` (10× the 2-d one).
                    values = np.array([[c.v[i] for c in touched] for i in slots], dtype=np.float64)
                    for j in range(len(slots)):
                        np.add.at(values[j], inverse, amounts[j][events])
                    for i, row in zip(slots, values.tolist()):
                        for c, x in zip(touched, row):
                            c.v[i] = x
                width_s = len(sources)
                marks = np.full(len(touched) * width_s, -1, dtype=np.int64)
                np.maximum.at(marks, inverse * width_s + src[events], off[events])
                for at in np.flatnonzero(marks >= 0).tolist():
                    touched[at // width_s].m[sources[at % width_s]] = int(marks[at])
                if distinct:
                    at = inverse.reshape(-1, k) if k > 1 else inverse.reshape(-1, 1)
                    for e, i, value in distinct:
                        for c in at[e].tolist():
                            touched[c].v[i].add(value)
        self._clear()


class PartitionAggregator:
    """Stage-1 state of one partition: open windows, sessions and the watermark."""

    def __init__(self, plan: Plan, *, idle_ms: int) -> None:
        self.plan = plan
        self.cells: dict[tuple[int, int], dict[tuple[int, tuple[str, ...]], Cell]] = {}
        self.sessions: dict[tuple[str, str], SessionGroup] = {}
        self.watermark = Watermark(idle_ms)  # over the sources without a delay
        self.slow: dict[str, int] = {}  # delayed source -> its own progress (largest ts or marker)
        self.horizon = NEVER  # watermark − lateness: the first pass of everything ending by this is closed
        self.closed: dict[str, int] = {}  # pass -> its horizon, as last reported to stage 2
        self._told: dict[str, int] = {}  # delayed type -> how far it had reported, as last told to stage 2
        self.reports: dict[tuple[Any, ...], Report] = {}  # restated key -> the report counted for it
        # Windows past their last pass that may still be revised: per group, the revisable
        # slots (Plan.revisable_slots order) and the marks that dedup replays.
        self.settled: dict[tuple[int, int], dict[tuple[int, tuple[str, ...]], Cell]] = {}
        self._revised: set[tuple[int, int, tuple[int, tuple[str, ...]]]] = set()  # to send at the next advance
        self.restatements = {"replaced": 0, "outdated": 0}  # reports that replaced one, or came older than it (a tally, not state)
        self.applied: dict[str, int] = {}  # source -> highest offset seen, stored with the watermark
        # source -> the highest mark of any cell restored from storage: cells may be stored
        # ahead of ``applied`` (a crash between them), so offsets up to it go one at a time.
        self._restored: dict[str, int] = {}
        # What to check for expiry, bucketed by time so a sweep looks only at what may be due:
        # per type, restated keys by where the report's last window ends (reports share a few
        # ends); session keys by when a session may expire, rounded up to the windows' grain.
        self._report_ends: dict[str, dict[int, list[tuple[Any, ...]]]] = {}
        self._session_ends: dict[int, set[tuple[str, str]]] = {}
        self._dirty: set[tuple[Any, ...]] = set()  # state keys, as tuples: cheap on the hot path
        self._deleted: set[tuple[Any, ...]] = set()
        self._windows = [(w.size, w.step) for w in plan.windows]
        self._grain = math.gcd(*(step for _, step in self._windows))

    # -- input -----------------------------------------------------------------

    def apply(self, events: Iterable[Routed]) -> list[Routed]:
        """Absorb events into their windows; return the ones too late to count.

        Most events take the columnar path (``_Columns``): they are only collected here,
        and their sums are added per cell at once by ``_Columns.flush``. The rest (restated and
        revisable reports, late data, a replay of offsets stored before a crash) take
        the per-event path below, which flushes first wherever order could matter.
        """
        late: list[Routed] = []
        plan, fast = self.plan, self.horizon
        late_at = self._late_horizons() if plan.arrival else {}
        # event type -> (_window_horizons, _revise_from, the ts from which it may take the columnar path), once per call
        by_type: dict[str, tuple[list[tuple[int, bool]], int | None, int | None]] = {}
        applied, restored = self.applied, self._restored
        columns = _Columns(self)
        sessions = plan.needs_sessions
        fresh = False
        for ev in events:
            src, off, etype, ts, data = ev
            if off <= applied.get(src, -1):
                continue  # stored before a crash: counted, or reported late, already
            applied[src] = off
            fresh = True
            per_type = by_type.get(etype)
            if per_type is None:
                horizons = self._window_horizons(etype, late_at.get(etype, fast))
                per_type = by_type[etype] = (horizons, self._revise_from(etype), self._columnar_from(etype, horizons))
            horizons, revise_from, columnar_from = per_type
            # Every window holding ts ends after ts, so ts at or past each window's horizon
            # means none of them has closed; an offset past every restored mark cannot have
            # been absorbed by any cell before a crash.
            if columnar_from is not None and ts >= columnar_from and off > restored.get(src, -1):
                contribution = plan.contribution(etype, data)
                if contribution is not None:
                    columns.add(src, off, ts, plan.groups(data), contribution)
                if etype == "pageview" and sessions:
                    self._track_session(src, off, ts, data)
                continue
            if columnar_from is not None:
                # The same type's slots and marks: add what was collected first, so each
                # cell's sums come out in event order, as if every event took this path.
                columns.flush()
            if self._absorb_one(ev, horizons, revise_from):
                late.append(ev)
        columns.flush()
        if fresh:
            self._dirty.add(("w",))  # it carries ``applied``
        return late

    def _columnar_from(self, etype: str, horizons: list[tuple[int, bool]]) -> int | None:
        """The event time from which this type's events may be added as columns (None: never).

        Restated and revisable types change cells after the fact (taking a report back,
        revising a settled window): they always go one event at a time. Slots belong to
        one event type each, so the two paths never add to the same slot of a cell.
        """
        if etype not in self.plan.feeds or etype in self.plan.restated or etype in self.plan.revise_for:
            return None
        return max(h for h, _ in horizons)

    def _absorb_one(self, ev: Routed, horizons: list[tuple[int, bool]], revise_from: int | None) -> bool:
        """Absorb one event on its own; True if it is late (to be reported)."""
        src, off, etype, ts, data = ev
        plan = self.plan
        dirty = self._dirty
        is_late = False
        contribution = plan.contribution(etype, data) if etype in plan.feeds else None
        feeds_measures = contribution is not None
        groups = plan.groups(data) if feeds_measures else ()
        taken: list[Cell] | None = []
        if feeds_measures and etype in plan.restated:
            taken = self._restate(src, off, etype, ts, data, horizons)
            if taken is None:
                return False  # an older version of a report already counted
        for wi, (size, step) in enumerate(self._windows):
            h, counts_late = horizons[wi]
            for start in window_starts(ts, size, step):
                if start + size <= h:
                    if revise_from is not None and feeds_measures and plan.window_revise[wi] and start + size > revise_from:
                        self._revise(src, off, wi, start, groups, contribution[0], +1)
                    else:
                        is_late = is_late or counts_late
                    continue
                if not feeds_measures:
                    continue
                window = self.cells.get((wi, start))
                if window is None:
                    window = self.cells[(wi, start)] = {}
                for g in groups:
                    cell = window.get(g)
                    if cell is None:
                        cell = window[g] = Cell(plan.new_vector(), {})
                    elif cell.m.get(src, -1) >= off:
                        continue  # absorbed before a crash; the restored state has it
                    plan.add_contribution(cell.v, contribution)
                    cell.m[src] = off
                    dirty.add(("c", wi, start, g[0], g[1]))
        for cell in taken:
            cell.m[src] = max(cell.m.get(src, -1), off)  # its report replaced: done, if this is read again
        if etype == "pageview" and plan.needs_sessions and not is_late:
            self._track_session(src, off, ts, data)
        return is_late

    def _revise_from(self, etype: str) -> int | None:
        """Windows of a revisable type ending after this may still be revised (None: not revisable)."""
        r = self.plan.revise_for.get(etype)
        return None if r is None else self.horizon - r

    def _revise(self, src: str, off: int, wi: int, start: int, groups: Iterable[tuple[int, tuple[str, ...]]],
                sums: list[tuple[int, float]], sign: int) -> list[Cell]:
        """Add (or, ``sign`` −1, take back) sums in a window past its last pass; return the cells changed.

        The revisable slots live in the window's full cells until they are dropped, then
        in its settled cells: whichever holds the group is what the revision sends.
        """
        pos = self.plan.revision_pos
        changed = []
        full = self.cells.get((wi, start))
        for g in groups:
            if full is not None:
                cell = full.get(g)
                if cell is None:
                    cell = full[g] = Cell(self.plan.new_vector(), {})
                index, key = None, ("c", wi, start, g[0], g[1])
            else:
                window = self.settled.setdefault((wi, start), {})
                cell = window.get(g)
                if cell is None:
                    cell = window[g] = Cell(array("d", bytes(8 * len(pos))), {})
                index, key = pos, ("v", wi, start, g[0], g[1])
            if cell.m.get(src, -1) >= off:
                continue  # stored with this event before a crash
            v = cell.v
            for i, amount in sums:
                j = i if index is None else index.get(i)
                if j is not None:
                    v[j] += sign * amount
            if sign > 0:
                cell.m[src] = off
            changed.append(cell)
            self._dirty.add(key)
            self._revised.add((wi, start, g))
        return changed

    def _revisions(self) -> list[Partial]:
        """This partition's whole share of the revisable slots of every group revised since the last call."""
        out = []
        slots = self.plan.revisable_slots
        for wi, start, g in sorted(self._revised):
            full = self.cells.get((wi, start))
            if full is not None and g in full:
                values = [full[g].v[i] for i in slots]
            else:
                values = list(self.settled[(wi, start)][g].v)
            out.append(Partial(wi, start, REVISION, g[0], g[1], values))
        self._revised.clear()
        return out

    def _late_horizons(self) -> dict[str, int]:
        """Per delayed event type, the horizon past which its events are late: when the first
        pass that waits for it closed (the fast horizon for types no pass waits for)."""
        out = {}
        for etype in self.plan.arrival:
            passes = [self.closed.get(p, NEVER) for p, types in self.plan.waits.items() if etype in types]
            out[etype] = max(passes) if passes else self.horizon
        return out

    def _window_horizons(self, etype: str, horizon: int) -> list[tuple[int, bool]]:
        """Per window: the horizon by which this type's events stop counting there, and whether
        missing it makes an event late. ``horizon``: the type's own (``_late_horizons``).

        Windows that do not wait for delayed data (config.settle_windows) take what arrived
        by their first pass, and a report arriving after it is not late there.
        """
        delayed = etype in self.plan.delayed
        return [(horizon, True) if not delayed or wi in self.plan.settles else (self.horizon, False)
                for wi in range(len(self._windows))]

    def _restate(self, src: str, off: int, etype: str, ts: int, data: dict[str, Any],
                 horizons: list[tuple[int, bool]]) -> list[Cell] | None:
        """Make a report the one its key counts as, taking the one it replaces back out of the
        windows still open; return the cells it was taken from. None when the report is older
        (by version) than the one counted.

        Idempotent under a crash: a cell whose mark for this source has reached the report's
        offset was stored with the replacement done. The ``r`` entry is written after the
        cells (``changes``), so a stored ``r`` means every cell it touched is stored too.
        """
        spec = self.plan.restated[etype]
        key = (etype, ts, *(ts if f == "ts" else data.get(f) for f in spec.key))
        version = float(data.get(spec.version, 0)) if spec.version else 0.0
        old = self.reports.get(key)
        cells: list[Cell] = []
        if old is not None:
            if version < old.version:
                self.restatements["outdated"] += 1
                return None
            self.restatements["replaced"] += 1
            old_data = self.plan.report_data(etype, old.values)
            taken = self.plan.contribution(etype, old_data)
            revise_from = self._revise_from(etype)
            for wi, (size, step) in enumerate(self._windows):
                h = horizons[wi][0]
                for start in window_starts(old.ts, size, step):
                    if taken is not None and start + size <= h and revise_from is not None \
                            and self.plan.window_revise[wi] and start + size > revise_from:
                        # Published, but still revisable: the revision takes the old report out.
                        cells += self._revise(src, off, wi, start, self.plan.groups(old_data), taken[0], -1)
                        continue
                    window = self.cells.get((wi, start))
                    if taken is None or start + size <= h or window is None:
                        continue  # published already: the replacement is late there too
                    for g in self.plan.groups(old_data):
                        cell = window.get(g)
                        if cell is None or cell.m.get(src, -1) >= off:
                            continue
                        for i, amount in taken[0]:
                            cell.v[i] -= amount
                        cells.append(cell)
                        self._dirty.add(("c", wi, start, g[0], g[1]))
        if old is None:
            self._report_ends.setdefault(etype, {}).setdefault(self._last_window_end(ts), []).append(key)
        self.reports[key] = Report(version, ts, self.plan.report_values(etype, data))
        self._dirty.add(("r", *key))
        return cells

    def _track_session(self, src: str, off: int, ts: int, data: dict[str, Any]) -> None:
        skey = (data["campaign"], data["session_id"])
        group = self.sessions.get(skey)
        if group is None:
            group = self.sessions[skey] = SessionGroup([], {})
        elif group.m.get(src, -1) >= off:
            return
        group.m[src] = off
        # A view within the timeout of a session joins it, and may bridge two sessions
        # into one; so the result doesn't depend on the order views arrive in.
        timeout = self.plan.session_timeout
        near = [s for s in group.sessions if s.first - timeout <= ts <= s.last + timeout]
        if not near:
            session = Session([ts], data)
            group.sessions.append(session)
        else:
            keep = min(near, key=lambda s: s.first)
            for other in near:
                if other is not keep:
                    keep.times = sorted(keep.times + other.times)
                    if other.first < keep.first:
                        keep.data = other.data
                    group.sessions.remove(other)
            if ts < keep.first:
                keep.data = data  # the earliest page view is the landing page
            bisect.insort(keep.times, ts)
            session = keep
        self._session_due(session, skey)
        self._dirty.add(("s", *skey))

    def observe(self, source: str, ts: int, now: float | None) -> None:
        """Record how far one source partition has progressed in event time.

        A delayed type's own topic is slow: it reports for that type and holds no window open.
        A tracker's topic carrying a delayed type among others (orders among page views) moves
        the watermark like any fast source, and its progress also says how far the delayed
        type has reported (less that type's declared lateness).
        """
        plan = self.plan
        if plan.delayed and plan.source_types(source) & plan.delayed:
            if ts > self.slow.get(source, -1) or source not in self.slow:
                self.slow[source] = ts
            if not plan.is_mixed(source):
                self._dirty.add(("w",))
                return
        self.watermark.observe(source, ts, now)
        self._dirty.add(("w",))

    def report(self, progress: dict[str, int], backlog: set[str], now: float, sent_at: float | None = None) -> None:
        """One router report (sent at ``sent_at``): every source's progress, and which still have a backlog."""
        for source, ts in progress.items():
            self.observe(source, ts, now)
        fast = {s for s in progress if s not in self.slow or self.plan.is_mixed(s)}
        self.watermark.report(now, fast, backlog & fast, sent_at)

    def pass_horizons(self) -> dict[str, int]:
        """Each pass's horizon now: a window's pass is closed once the window ends by it.

        A second pass (``+complete``) waits for every delayed type its KPIs read: until
        the type's own progress (minus its lateness) passes the window's end, or until
        the fast streams are ``delay`` past it, whichever comes first.
        """
        plan, h = self.plan, self.horizon
        if h >= FOREVER or h <= NEVER:
            return {p: h for p in plan.passes}
        out = plan.first_pass_horizons(h)
        for p, types in plan.waits.items():
            out[p] = min(out[base_phase(p)], *(self._type_horizon(t) for t in types))
        return {p: out[p] for p in plan.passes}

    def report_horizons(self) -> dict[str, int]:
        """What stage 2 is told: each pass's horizon, and how far each delayed type has
        reported by itself (``@spend``), for the stale-feed check."""
        out = dict(self.closed)
        for etype in self.plan.delayed:
            out["@" + etype] = self.reported(etype)
        return out

    def _type_horizon(self, etype: str) -> int:
        return max(self.reported(etype), self.horizon - self.plan.arrival[etype].delay)

    def reported(self, etype: str) -> int:
        """How far a delayed type has reported by itself: its slowest partition's progress, less its lateness."""
        progress = [ts for src, ts in self.slow.items() if ts >= 0 and etype in self.plan.source_types(src)]
        return min(progress) - self.plan.arrival[etype].lateness if progress else NEVER

    # -- closing ---------------------------------------------------------------

    def advance(self, now: float | None, *, force: int | None = None) -> list[Partial] | None:
        """Move the horizon to watermark − lateness; return the partials of windows that closed.

        None means no window boundary was crossed, so there is nothing to report.
        """
        wm = self.watermark.current(now)
        target = force if force is not None else (NEVER if wm is None else wm - self.plan.lateness)
        if target > self.horizon:
            self.horizon = target
            self._dirty.add(("w",))
        old = self.closed
        now_at = self.pass_horizons()
        # A delayed feed that reported further must reach stage 2 even when no window closes:
        # its stale-feed check reads it (a report read after the fast streams went quiet would
        # otherwise wait for their next window to open or resolve the feed's alert).
        told = {t: self.reported(t) for t in self.plan.delayed}
        quiet: list[Partial] | None = None if told == self._told else []
        self._told = told
        if all(h <= old.get(p, NEVER) for p, h in now_at.items()):
            return self._revisions() or quiet
        new = self.closed = {p: max(h, old.get(p, NEVER)) for p, h in now_at.items()}
        self._dirty.add(("w",))
        if not any(self._crosses_boundary(old.get(p, NEVER), h) for p, h in new.items()):
            return self._revisions() or quiet
        out: list[Partial] = []
        passes, settles = self.plan.passes, self.plan.settles
        last = min(new.values())
        last_unsettled = min(h for p, h in new.items() if not is_complete(p))
        sessions = self._session_windows(old.get(SESSIONS, NEVER), new[SESSIONS]) if SESSIONS in new else set()
        reported = told
        for (wi, start) in sorted(self.cells.keys() | sessions):
            end = start + self._windows[wi][0]
            for p in passes:
                if is_complete(p) and wi not in settles:
                    continue  # this window does not wait for delayed data: no second pass
                if old.get(p, NEVER) < end <= new[p]:
                    if p == SESSIONS:
                        self._add_sessions(wi, start, end)
                    # The end of a replay (FOREVER) has read everything: nothing is stale there.
                    stale = () if new[p] >= FOREVER else tuple(sorted(t for t in self.plan.waits.get(p, ()) if reported[t] < end))
                    out += self._emit(wi, start, p, stale)
            if wi not in settles and EVENTS in new and old.get(EVENTS, NEVER) < end <= new[EVENTS]:
                # Past its first pass, a window that does not wait for delayed data takes no more
                # events (each would be late there), so its cells' marks are no longer asked:
                # they go from memory (the stored cells keep theirs). Its cells stay for the
                # sessions pass, a session timeout later: ~30 windows of them at a time.
                for cell in self.cells.get((wi, start), {}).values():
                    cell.m = {}
            if end <= (last if wi in settles else last_unsettled):
                self._settle(wi, start, self.cells.pop((wi, start), {}))
        self._expire_sessions()
        self._expire_reports(last)
        self._expire_settled()
        return out + self._revisions()

    def _settle(self, wi: int, start: int, cells: dict[tuple[int, tuple[str, ...]], Cell]) -> None:
        """A window past its last pass: drop its cells, keeping the revisable slots while it may be revised."""
        keep = self.plan.window_revise[wi] and start + self._windows[wi][0] > self.horizon - self.plan.window_revise[wi]
        slots = self.plan.revisable_slots
        for g, cell in cells.items():
            self._drop(("c", wi, start, g[0], g[1]))
            if keep:
                self.settled.setdefault((wi, start), {})[g] = Cell(array("d", [cell.v[i] for i in slots]), cell.m)
                self._dirty.add(("v", wi, start, g[0], g[1]))

    def _expire_settled(self) -> None:
        for wi, start in list(self.settled):
            if start + self._windows[wi][0] <= self.horizon - self.plan.window_revise[wi]:
                for g in self.settled.pop((wi, start)):
                    self._drop(("v", wi, start, g[0], g[1]))

    def _crosses_boundary(self, old: int, new: int) -> bool:
        # Window ends are multiples of the steps' gcd, so between two such multiples
        # nothing can close and the scan below is skipped (advance runs per batch).
        if old <= NEVER or new >= FOREVER:
            return True
        return new // self._grain > old // self._grain

    def _session_windows(self, old: int, new: int) -> set[tuple[int, int]]:
        # A window that only sessions contribute to has no cell yet when its sessions close.
        found = set()
        for group in self.sessions.values():
            for s in group.sessions:
                for wi, (size, step) in enumerate(self._windows):
                    for start in window_starts(s.first, size, step):
                        if old < start + size <= new:
                            found.add((wi, start))
        return found

    def _expire_reports(self, closed: int) -> None:
        # A report whose every window has had its last pass (and can no longer be revised)
        # can no longer be replaced.
        revise = self.plan.revise_for
        for etype, ends in self._report_ends.items():
            until = min(closed, self.horizon - revise.get(etype, 0))
            for end in sorted(e for e in ends if e <= until):
                for key in ends.pop(end):
                    if self.reports.pop(key, None) is not None:
                        self._drop(("r", *key))

    def _add_sessions(self, wi: int, start: int, end: int) -> None:
        window = self.cells.setdefault((wi, start), {})
        plan = self.plan
        for group in self.sessions.values():
            for s in group.sessions:
                if start <= s.first < end:
                    record = s.record(end + self.plan.session_timeout)
                    for g in plan.groups(record):
                        cell = window.get(g)
                        if cell is None:
                            cell = window[g] = Cell(plan.new_vector(), {})
                        plan.add(cell.v, "session", record)

    def _emit(self, wi: int, start: int, phase: str, stale: tuple[str, ...] = ()) -> list[Partial]:
        copy = self.plan.copy
        return [Partial(wi, start, phase, g[0], g[1], copy(c.v), stale) for g, c in self.cells.get((wi, start), {}).items()]

    def _expire_sessions(self) -> None:
        # Only the buckets now due are looked at; a session found alive there (a later view
        # moved its end) was filed again under its new end when that view came.
        timeout, horizon = self.plan.session_timeout, self.horizon
        for due in sorted(d for d in self._session_ends if d <= horizon):
            for skey in self._session_ends.pop(due):
                group = self.sessions.get(skey)
                if group is None:
                    continue
                keep = [s for s in group.sessions if self._session_end(s) + timeout > horizon]
                if len(keep) != len(group.sessions):
                    if keep:
                        group.sessions = keep
                        self._dirty.add(("s", *skey))
                    else:
                        del self.sessions[skey]
                        self._drop(("s", *skey))

    def _session_due(self, session: Session, skey: tuple[str, str]) -> None:
        """File a session under the first grain boundary at or after it may expire."""
        at = self._session_end(session) + self.plan.session_timeout
        due = -(-at // self._grain) * self._grain
        self._session_ends.setdefault(due, set()).add(skey)

    def _session_end(self, s: Session) -> int:
        return max(s.last, self._last_window_end(s.first))

    def _last_window_end(self, ts: int) -> int:
        return max(ts - ts % step + size for size, step in self._windows)

    def _drop(self, key: tuple[Any, ...]) -> None:
        self._dirty.discard(key)
        self._deleted.add(key)

    # -- persistence -----------------------------------------------------------

    def changes(self) -> list[Change]:
        """State written since the last call, in the order to store it (value None deletes).

        The watermark entry, which carries ``applied``, comes last: when it is stored,
        everything it vouches for is stored too (a changelog partition keeps order).
        """
        return drain(self._dirty, self._deleted, self._value, last=("w",), after=("r",))

    def _value(self, parts: tuple[Any, ...]) -> Any:
        kind = parts[0]
        if kind == "w":
            return {"latest": self.watermark.latest, "horizon": self.horizon, "applied": self.applied,
                    "live": self.watermark.live_sources(), "slow": self.slow, "closed": self.closed}
        if kind == "r":
            r = self.reports[parts[1:]]
            return {"version": r.version, "t": r.ts, "d": self.plan.report_data(parts[1], r.values)}
        if kind == "c":
            _, wi, start, bi, group = parts
            cell = self.cells[(wi, start)][(bi, group)]
            return {"v": self.plan.encode(cell.v), "m": cell.m}
        if kind == "v":
            _, wi, start, bi, group = parts
            cell = self.settled[(wi, start)][(bi, group)]
            return {"v": list(cell.v), "m": cell.m}
        _, campaign, sid = parts
        g = self.sessions[(campaign, sid)]
        return {"s": [[s.times, s.data] for s in g.sessions], "m": g.m}

    def load(self, key: str, value: Any) -> None:
        """Restore one stored entry (from ``changes``) after a restart or rebalance."""
        parts = orjson.loads(key)
        kind = parts[0]
        if kind == "w":
            for src, ts in value["latest"].items():
                self.watermark.observe(src, ts, None)
            self.horizon = max(self.horizon, value["horizon"])
            for src, off in value.get("applied", {}).items():
                self.applied[src] = max(off, self.applied.get(src, -1))
            for src in value.get("live", []):
                self.watermark.restore_live(src)
            for src, ts in value.get("slow", {}).items():
                self.slow[src] = max(ts, self.slow.get(src, -1))
            # Stored before passes existed: the first pass of each phase is where the horizon says.
            closed = value.get("closed") or self.plan.first_pass_horizons(value["horizon"])
            for p, h in closed.items():
                self.closed[p] = max(h, self.closed.get(p, NEVER))
        elif kind == "c":
            _, wi, start, bi, group = parts
            self.cells.setdefault((wi, start), {})[(bi, tuple(group))] = Cell(self.plan.decode(value["v"]), value["m"])
            for src, off in value["m"].items():
                if off > self._restored.get(src, -1):
                    self._restored[src] = off
        elif kind == "v":
            _, wi, start, bi, group = parts
            self.settled.setdefault((wi, start), {})[(bi, tuple(group))] = Cell(array("d", value["v"]), value["m"])
        elif kind == "r":
            key = tuple(parts[1:])
            end = self._last_window_end(value["t"])
            self.reports[key] = Report(value["version"], value["t"], self.plan.report_values(parts[1], value["d"]))
            self._report_ends.setdefault(parts[1], {}).setdefault(end, []).append(key)
        else:
            _, campaign, sid = parts
            sessions = [Session(times, data) for times, data in value["s"]]
            self.sessions[(campaign, sid)] = SessionGroup(sessions, value["m"])
            for session in sessions:
                self._session_due(session, (campaign, sid))
