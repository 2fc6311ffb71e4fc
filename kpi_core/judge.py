"""The alert judge: the one place where a whole window's tests are weighed together.

Stage 2 is spread over partitions (a campaign's groups in one, the channel and total groups
wherever their hash puts them), but false-discovery control and root causes need every test of
a window at once. So each stage-2 partition hands its closed windows (their snapshots, trimmed
to what the rules read) and its horizons to the judge in stage-2 partition 0, over the partials
topic. A window is judged once every stage-2 partition's horizon has passed its end — with all
of its snapshots, exactly as ``kpimon replay`` judges it in one process, so replay equals live.

Crash safety follows stage 2's: a partition's hand-over is sent before its state is stored, so
after a crash it is sent again; the judge drops a repeat (a partition already merged into a
pending window, or a window already judged, by horizon). Revisions are judged as they arrive
(the engine judges a revised window again from its stored state, so a repeat changes nothing).
"""

from __future__ import annotations

from typing import Any

import orjson

from kpi_core.aggregate import NEVER
from kpi_core.alerting import AlertEngine
from kpi_core.combine import ClosedWindow, lowest_horizons, raise_horizons
from kpi_core.incidents import AlertEvent
from kpi_core.plan import Plan
from kpi_core.results import Snapshot
from kpi_core.state import Change, drain


def snapshot_row(snap: Snapshot, measures: frozenset[str], kpis: frozenset[str]) -> list[Any]:
    """A snapshot as the judge needs it: the measures and KPIs its rules read."""
    prev = {m: v for m, v in snap.previous.items() if m in measures} if snap.previous is not None else None
    return [snap.window, snap.start, snap.end, list(snap.dims), [snap.group[d] for d in snap.dims], snap.phase,
            {m: v for m, v in snap.measures.items() if m in measures}, {k: v for k, v in snap.kpis.items() if k in kpis},
            prev, snap.version, snap.revised]


def from_row(row: list[Any]) -> Snapshot:
    window, start, end, dims, values, phase, measures, kpis, previous, version, revised = row
    dims = tuple(dims)
    return Snapshot(window, start, end, dims, dict(zip(dims, values)), phase, measures, kpis, previous, version, revised=revised)


class Judge:
    """Partition 0's gathering of closed windows from every stage-2 partition."""

    def __init__(self, plan: Plan, engine: AlertEngine, *, sources: int) -> None:
        self.plan = plan
        self.engine = engine
        self.n_sources = sources
        self.horizons: dict[int, dict[str, int]] = {}  # stage-2 partition -> pass -> horizon
        self.pending: dict[tuple[int, int, str], tuple[set[int], list[Snapshot]]] = {}
        self._dirty: set[tuple[Any, ...]] = set()
        self._deleted: set[tuple[Any, ...]] = set()

    def _lowest(self) -> dict[str, int]:
        return lowest_horizons(self.horizons, self.n_sources, set().union(*(h.keys() for h in self.horizons.values())))

    def receive(self, source: int, horizons: dict[str, int], windows: list[ClosedWindow]) -> list[AlertEvent]:
        """Merge one stage-2 partition's closed windows; judge every window all partitions have closed."""
        done = self._lowest()
        out: list[AlertEvent] = []
        for closed in windows:
            if closed.revision:
                out += self.engine.judge(closed)
                continue
            key = (closed.window, closed.start, closed.phase)
            if closed.start + self.plan.windows[closed.window].size <= done.get(closed.phase, NEVER):
                continue  # judged already: a repeat after a crash
            sources, snaps = self.pending.setdefault(key, (set(), []))
            if source in sources:
                continue
            sources.add(source)
            snaps += closed.snapshots
            self._dirty.add(("p", *key))
        if raise_horizons(self.horizons.setdefault(source, {}), horizons):
            self._dirty.add(("h",))
        lowest = self._lowest()
        for key in sorted(self.pending):
            wi, start, phase = key
            if start + self.plan.windows[wi].size <= lowest.get(phase, NEVER):
                _, snaps = self.pending.pop(key)
                self._dirty.discard(("p", *key))
                self._deleted.add(("p", *key))
                out += self.engine.judge(ClosedWindow(wi, start, phase, snaps))
        return out

    # -- persistence -----------------------------------------------------------

    def changes(self) -> list[Change]:
        return drain(self._dirty, self._deleted, self._value)

    def _value(self, key: tuple[Any, ...]) -> Any:
        if key[0] == "h":
            return {str(s): dict(h) for s, h in self.horizons.items()}
        sources, snaps = self.pending[key[1:]]
        return {"sources": sorted(sources), "snapshots": [snapshot_row(s, frozenset(s.measures), frozenset(s.kpis)) for s in snaps]}

    def load(self, key: str, value: Any) -> None:
        parts = orjson.loads(key)
        if parts[0] == "h":
            for s, h in value.items():
                raise_horizons(self.horizons.setdefault(int(s), {}), h)
        else:
            _, wi, start, phase = parts
            self.pending[(wi, start, phase)] = (set(value["sources"]), [from_row(r) for r in value["snapshots"]])
