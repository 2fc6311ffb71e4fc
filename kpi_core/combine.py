"""Stage 2: add up the partials of every stage-1 partition and finalize closed windows.

Each stage-1 partition reports its horizon (everything ending at or before it is
closed) together with its partials. A window's phase is final once *every*
stage-1 partition's horizon has passed it. A partial from a partition already
merged for that window is a replay after a crash and is ignored, so redelivery
never double-counts.
"""

from __future__ import annotations

from typing import Any, Iterable

import orjson

from kpi_core.aggregate import NEVER, Partial
from kpi_core.plan import Plan
from kpi_core.results import Snapshot


class PendingWindow:
    __slots__ = ("sources", "groups")

    def __init__(self, sources: set[int], groups: dict[tuple[int, tuple[str, ...]], list[float]]) -> None:
        self.sources = sources  # stage-1 partitions merged in
        self.groups = groups


class Combiner:
    """Stage-2 state for one partition of the partials topic."""

    def __init__(self, plan: Plan, *, sources: int) -> None:
        self.plan = plan
        self.n_sources = sources
        self.horizons: dict[int, int] = {}
        self.pending: dict[tuple[int, int, str], PendingWindow] = {}
        self.last: dict[tuple[int, str, int, tuple[str, ...]], tuple[int, dict[str, float]]] = {}
        self._dirty: set[tuple[Any, ...]] = set()
        self._deleted: set[tuple[Any, ...]] = set()

    def receive(self, source: int, horizon: int, partials: Iterable[Partial]) -> None:
        """Merge one stage-1 partition's report."""
        merged_now: set[tuple[int, int, str]] = set()
        for p in partials:
            wkey = (p.window, p.start, p.phase)
            pending = self.pending.get(wkey)
            if pending is None:
                pending = self.pending[wkey] = PendingWindow(set(), {})
            elif source in pending.sources and wkey not in merged_now:
                continue  # already merged: a redelivery
            merged_now.add(wkey)
            g = (p.breakdown, p.group)
            acc = pending.groups.get(g)
            if acc is None:
                pending.groups[g] = self.plan.copy(p.vector)
            else:
                self.plan.merge(acc, p.vector)
        for wkey in merged_now:
            self.pending[wkey].sources.add(source)
            self._dirty.add(("p", *wkey))
        if horizon > self.horizons.get(source, NEVER):
            self.horizons[source] = horizon
            self._dirty.add(("h",))

    def finalize(self) -> list[Snapshot]:
        """Snapshots of every window phase that all stage-1 partitions have closed."""
        if len(self.horizons) < self.n_sources:
            return []
        low = min(self.horizons.values())
        out: list[Snapshot] = []
        plan = self.plan
        for wkey in sorted(self.pending):
            wi, start, phase = wkey
            window = plan.windows[wi]
            end = start + window.size
            if end + plan.delay(phase) > low:
                continue
            for (bi, group), vector in sorted(self.pending.pop(wkey).groups.items()):
                dims = plan.breakdowns[bi]
                measures = plan.measures(vector, phase)
                previous = self._previous(wi, phase, bi, group, start, measures)
                snap = Snapshot(
                    window=window.name,
                    start=start,
                    end=end,
                    dims=dims,
                    group=dict(zip(dims, group)),
                    phase=phase,
                    measures=measures,
                    kpis=plan.kpi_values(measures, phase, previous),
                    previous=previous,
                )
                out.append(snap)
            self._dirty.discard(("p", *wkey))
            self._deleted.add(("p", *wkey))
        return out

    def _previous(self, wi: int, phase: str, bi: int, group: tuple[str, ...], start: int, measures: dict[str, float]) -> dict[str, float] | None:
        """The group's measures in the window just before this one (for change KPIs), and remember this one."""
        if not self.plan.has_change:
            return None
        key = (wi, phase, bi, group)
        last = self.last.get(key)
        self.last[key] = (start, measures)
        self._dirty.add(("l", *key))
        step = self.plan.windows[wi].step or 0
        return last[1] if last is not None and last[0] == start - step else None

    # -- persistence -----------------------------------------------------------

    def changes(self) -> tuple[dict[str, Any], set[str]]:
        """State written since the last call: values to store by key, and keys to delete."""
        upserts = {orjson.dumps(k).decode(): self._value(k) for k in self._dirty}
        deleted = {orjson.dumps(k).decode() for k in self._deleted - self._dirty}
        self._dirty, self._deleted = set(), set()
        return upserts, deleted

    def _value(self, key: tuple[Any, ...]) -> Any:
        if key[0] == "h":
            return {str(s): h for s, h in self.horizons.items()}
        if key[0] == "l":
            start, measures = self.last[key[1:]]
            return {"start": start, "measures": measures}
        pending = self.pending[key[1:]]
        enc = self.plan.encode
        return {"sources": sorted(pending.sources), "groups": [[bi, list(g), enc(v)] for (bi, g), v in pending.groups.items()]}

    def load(self, key: str, value: Any) -> None:
        """Restore one stored entry (from ``changes``)."""
        parts = orjson.loads(key)
        if parts[0] == "h":
            for s, h in value.items():
                self.horizons[int(s)] = max(h, self.horizons.get(int(s), NEVER))
        elif parts[0] == "l":
            _, wi, phase, bi, group = parts
            self.last[(wi, phase, bi, tuple(group))] = (value["start"], value["measures"])
        else:
            _, wi, start, phase = parts
            groups = {(bi, tuple(g)): self.plan.decode(v) for bi, g, v in value["groups"]}
            self.pending[(wi, start, phase)] = PendingWindow(set(value["sources"]), groups)
