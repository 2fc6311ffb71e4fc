"""Stage 2: add up the partials of every stage-1 partition and finalize closed windows.

Each stage-1 partition reports its horizon per pass (a window's pass is closed
once the window ends by it) together with its partials. A window's pass is
final once *every* stage-1 partition's horizon for it has passed the window's end.
A phase's first pass is version 1 of its snapshots; its second pass
(``+complete``, KPIs over delayed sources final) is version 2. A partial from a partition already
merged for that window is a replay after a crash and is ignored, so redelivery
never double-counts.

Revisions (``revise_for``): for a window that may still be revised, each stage-1
partition's share of the revisable slots is kept per group. A revision partial is a
partition's new whole share; put in place of the old one (only if it comes from a
later stage-1 input position, so a replay after a crash never steps back), it gives
the group's revised totals, published as the next version when they changed.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from kpi_core.aggregate import NEVER, Partial
from kpi_core.plan import EVENTS, REVISION, Plan, base_phase, is_complete
from kpi_core.results import Snapshot
from kpi_core.state import Change, drain


def lowest_horizons(horizons: dict[int, dict[str, int]], sources: int, keys: Iterable[str]) -> dict[str, int]:
    """Per key (pass), the lowest horizon over ``sources`` partitions' reports; empty until all reported."""
    if len(horizons) < sources:
        return {}
    return {p: min(h.get(p, NEVER) for h in horizons.values()) for p in keys}


def raise_horizons(mine: dict[str, int], new: dict[str, int]) -> bool:
    """Take the later of each horizon (a repeat or a replay never moves one back); True if any moved."""
    moved = False
    for p, h in new.items():
        if h > mine.get(p, NEVER):
            mine[p] = h
            moved = True
    return moved


@dataclass(slots=True)
class ClosedWindow:
    """One window phase, final across all partitions, with this partition's groups."""

    window: int
    start: int
    phase: str
    snapshots: list[Snapshot]
    revision: bool = False  # snapshots of a window published before, revised (version 3 and on)


Group = tuple[int, tuple[str, ...]]
Shares = dict[int, tuple[int, list[float]]]  # stage-1 partition -> (its input position, its revisable slots)


class PendingWindow:
    __slots__ = ("sources", "groups", "stale", "shares")

    def __init__(self, sources: set[int], groups: dict[Group, list[float]], stale: set[str] | None = None,
                 shares: dict[Group, Shares] | None = None) -> None:
        self.sources = sources  # stage-1 partitions merged in
        self.groups = groups
        self.stale = stale or set()  # delayed types some partition closed the pass without
        self.shares = shares if shares is not None else {}  # revisable windows only


class Published:
    """A group's last published values in a window that may still be revised.

    Kept for every group of the window for ``revise_for`` (72 h of hourly windows), so it is
    compact: the slots in an array, the previous window only where change KPIs read it, and,
    when one stage-1 partition gave all of it (a campaign's groups live in one), just that
    partition and its position instead of a copy of its share.
    """

    __slots__ = ("version", "slots", "previous", "shares")

    def __init__(self, version: int, slots: array, previous: tuple[float, ...] | None, shares: Shares | tuple[int, int]) -> None:
        self.version = version
        self.slots = slots  # every slot as published (Plan.slot_names order)
        self.previous = previous  # the previous window's Plan.change_measures, if it was published
        self.shares = shares  # per partition, or (partition, position) when its share is all of it

    def replace_share(self, source: int, at: int, values: list[float], slots: tuple[int, ...]) -> list[float] | None:
        """Put one partition's new share in; return the revisable totals, or None for a replay."""
        shares = self.shares
        if isinstance(shares, tuple):
            if shares[0] == source:
                if shares[1] >= at:
                    return None
                self.shares = (source, at)
                return list(values)
            shares = self.shares = {shares[0]: (shares[1], [self.slots[i] for i in slots])}
        old = shares.get(source)
        if old is not None and old[0] >= at:
            return None  # a replay: this share, or a later one, is in already
        shares[source] = (at, list(values))
        return [sum(share[1][j] for share in shares.values()) for j in range(len(slots))]


@dataclass(slots=True)
class RevisableWindow:
    stale: set[str]  # delayed types its final pass closed without
    groups: dict[Group, Published] = field(default_factory=dict)


class Combiner:
    """Stage-2 state for one partition of the partials topic."""

    def __init__(self, plan: Plan, *, sources: int) -> None:
        self.plan = plan
        self.n_sources = sources
        self.horizons: dict[int, dict[str, int]] = {}  # stage-1 partition -> pass -> horizon
        self.pending: dict[tuple[int, int, str], PendingWindow] = {}
        self.last: dict[tuple[int, str, int, tuple[str, ...]], tuple[int, dict[str, float]]] = {}
        self.evaluated: dict[int, int] = {}  # window index -> start of the last closed events phase
        self.revisable: dict[tuple[int, int, str], RevisableWindow] = {}  # published windows that may still be revised
        self._revisions: list[tuple[int, int, Partial]] = []  # (source, position, revision) for published windows
        self._dirty: set[tuple[Any, ...]] = set()
        self._deleted: set[tuple[Any, ...]] = set()

    def lowest(self) -> dict[str, int]:
        """Per pass, the lowest horizon over all stage-1 partitions (empty until all reported):
        every window phase that ended by it has been finalized."""
        return lowest_horizons(self.horizons, self.n_sources, {EVENTS, *self.plan.passes, *("@" + t for t in self.plan.delayed)})

    def reported(self) -> tuple[int, dict[str, int]]:
        """(the fast streams' horizon, how far each delayed type has reported), over every stage-1 partition."""
        lowest = self.lowest()
        return lowest.get(EVENTS, NEVER), {t: lowest.get("@" + t, NEVER) for t in self.plan.delayed}

    def receive(self, source: int, horizons: dict[str, int] | int, partials: Iterable[Partial], at: int = 0) -> None:
        """Merge one stage-1 partition's report (``at``: its input position when it sent it)."""
        if isinstance(horizons, int):  # sent before passes existed
            horizons = self.plan.first_pass_horizons(horizons)
        merged_now: set[tuple[int, int, str]] = set()
        # Everything that ended by the lowest horizon was finalized already (finalize
        # runs after every report): a partial for it is a redelivery after a crash.
        done = self.lowest()
        plan = self.plan
        revisions = []
        for p in partials:
            if p.phase == REVISION:
                revisions.append(p)
                continue
            wkey = (p.window, p.start, p.phase)
            if p.start + plan.windows[p.window].size <= done.get(p.phase, NEVER):
                continue
            pending = self.pending.get(wkey)
            if pending is None:
                pending = self.pending[wkey] = PendingWindow(set(), {})
            elif source in pending.sources and wkey not in merged_now:
                continue  # already merged: a redelivery
            merged_now.add(wkey)
            pending.stale.update(p.stale)
            g = (p.breakdown, p.group)
            acc = pending.groups.get(g)
            if acc is None:
                pending.groups[g] = self.plan.copy(p.vector)
            else:
                self.plan.merge(acc, p.vector)
            if p.phase in plan.revised_passes and plan.window_revise[p.window]:
                pending.shares.setdefault(g, {})[source] = (at, [p.vector[i] for i in plan.revisable_slots])
        for wkey in merged_now:
            self.pending[wkey].sources.add(source)
            self._dirty.add(("p", *wkey))
        for r in revisions:
            self._receive_revision(source, at, r, done)
        if raise_horizons(self.horizons.setdefault(source, {}), horizons):
            self._dirty.add(("h",))

    def _receive_revision(self, source: int, at: int, r: Partial, done: dict[str, int]) -> None:
        """A window still waiting for other partitions takes the new share at once; a published
        one is revised when ``finalize_windows`` runs."""
        plan, g = self.plan, (r.breakdown, r.group)
        end = r.start + plan.windows[r.window].size
        for phase in plan.revised_passes:
            wkey = (r.window, r.start, phase)
            pending = self.pending.get(wkey)
            if pending is None and wkey not in self.revisable and end > done.get(phase, NEVER):
                pending = self.pending[wkey] = PendingWindow(set(), {})
            if pending is None:
                self._revisions.append((source, at, r))
                continue
            shares = pending.shares.setdefault(g, {})
            old = shares.get(source)
            if old is not None and old[0] >= at:
                continue  # a replay: this share, or a later one, is in already
            acc = pending.groups.get(g)
            if acc is None:
                acc = pending.groups[g] = plan.new_vector()
            for j, i in enumerate(plan.revisable_slots):
                acc[i] += r.vector[j] - (old[1][j] if old else 0.0)
            shares[source] = (at, list(r.vector))
            self._dirty.add(("p", *wkey))

    def finalize(self) -> list[Snapshot]:
        """Snapshots of every window phase that all stage-1 partitions have closed."""
        return [snap for closed in self.finalize_windows() for snap in closed.snapshots]

    def finalize_windows(self, *, empty_until: int | None = None) -> list[ClosedWindow]:
        """Every window phase that all stage-1 partitions have closed, in order, with its snapshots.

        Windows in which this partition saw no data at all are included (empty) once
        a window of that size has been seen, so silence itself can be alerted on;
        ``empty_until`` bounds them (the end of a replay is not silence).
        """
        lowest = self.lowest()
        if not lowest:
            return []
        plan = self.plan
        ready = []
        for wkey in self.pending:
            wi, start, phase = wkey
            if start + plan.windows[wi].size <= lowest.get(phase, NEVER):
                ready.append(wkey)
        low = lowest.get(EVENTS, NEVER)
        ready += self._empty_windows(low if empty_until is None else min(low, empty_until), set(ready))
        out: list[ClosedWindow] = []
        for wkey in sorted(ready):
            wi, start, phase = wkey
            window = plan.windows[wi]
            end = start + window.size
            snaps = []
            pending = self.pending.pop(wkey, None)
            for (bi, group), vector in sorted(pending.groups.items() if pending else []):
                dims = plan.breakdowns[bi]
                measures = plan.measures(vector, phase)
                previous = self._previous(wi, phase, bi, group, start, measures)
                final, provisional = plan.results(measures, phase, previous, stale=pending.stale if pending else set())
                snaps.append(
                    Snapshot(
                        window=window.name,
                        start=start,
                        end=end,
                        dims=dims,
                        group=dict(zip(dims, group)),
                        phase=base_phase(phase),
                        measures=measures,
                        kpis=final,
                        previous=previous,
                        version=2 if is_complete(phase) else 1,
                        provisional=provisional,
                        waiting_for=plan.waiting_for(phase, pending.stale) if provisional else [],
                    )
                )
            if pending is not None:
                self._dirty.discard(("p", *wkey))
                self._deleted.add(("p", *wkey))
                if phase in plan.revised_passes and plan.window_revise[wi] and end > low - plan.window_revise[wi]:
                    self._keep_for_revision(wkey, pending, snaps)
            if phase == EVENTS:
                self.evaluated[wi] = max(self.evaluated.get(wi, NEVER), start)
                self._dirty.add(("e",))
            out.append(ClosedWindow(wi, start, phase, snaps))
        out += self._revise(lowest)
        self._expire_revisable(low)
        return out

    def _keep_for_revision(self, wkey: tuple[int, int, str], pending: PendingWindow, snaps: list[Snapshot]) -> None:
        rw = self.revisable[wkey] = RevisableWindow(set(pending.stale))
        self._dirty.add(("R", *wkey))
        plan = self.plan
        for (bi, group), snap in zip(sorted(pending.groups), snaps):
            shares: Shares | tuple[int, int] = pending.shares.get((bi, group), {})
            if len(shares) == 1:
                (source, (at, _)), = shares.items()
                shares = (source, at)
            previous = tuple(snap.previous.get(m, 0.0) for m in plan.change_measures) if snap.previous else None
            rw.groups[(bi, group)] = Published(2, array("d", plan.slot_values(snap.measures)), previous, shares)
            self._dirty.add(("Q", *wkey, bi, group))

    def _revise(self, lowest: dict[str, int]) -> list[ClosedWindow]:
        """Revised snapshots of published windows: one new version per group whose totals changed."""
        plan = self.plan
        slots = plan.revisable_slots
        reported = {t: lowest.get("@" + t, NEVER) for t in plan.delayed}
        out: dict[tuple[int, int, str], list[Snapshot]] = {}
        for source, at, r in self._revisions:
            for phase in plan.revised_passes:
                wkey = (r.window, r.start, phase)
                window = plan.windows[r.window]
                end = r.start + window.size
                rw = self.revisable.get(wkey)
                if rw is None:
                    if end <= lowest.get(EVENTS, NEVER) - plan.window_revise[r.window]:
                        continue  # no longer revisable
                    rw = self.revisable[wkey] = RevisableWindow(set())  # published with no group at all
                    self._dirty.add(("R", *wkey))
                g = (r.breakdown, r.group)
                pub = rw.groups.get(g)
                if pub is None:
                    pub = rw.groups[g] = Published(2, array("d", [0.0] * plan.size), None, {})
                revised = pub.replace_share(source, at, r.vector, slots)
                if revised is None:
                    continue
                self._dirty.add(("Q", *wkey, *g))
                before = [pub.slots[i] for i in slots]
                if revised == before:
                    continue
                dims = plan.breakdowns[r.breakdown]
                old_measures = plan.revised_measures(list(pub.slots), before, phase)
                measures = plan.revised_measures(list(pub.slots), revised, phase)
                for i, x in zip(slots, revised):
                    pub.slots[i] = x
                pub.version += 1
                stale = {t for t in rw.stale if reported[t] < end}
                previous = dict(zip(plan.change_measures, pub.previous)) if pub.previous is not None else None
                final, provisional = plan.results(measures, phase, previous, stale=stale)
                out.setdefault(wkey, []).append(Snapshot(
                    window=window.name, start=r.start, end=end, dims=dims, group=dict(zip(dims, r.group)),
                    phase=base_phase(phase), measures=measures, kpis=final, previous=previous, version=pub.version,
                    provisional=provisional, waiting_for=plan.waiting_for(phase, stale) if provisional else [],
                    revised={n: [old_measures[n], v] for n, v in measures.items() if old_measures.get(n) != v},
                ))
        self._revisions.clear()
        return [ClosedWindow(wi, start, phase, snaps, revision=True) for (wi, start, phase), snaps in sorted(out.items())]

    def _expire_revisable(self, low: int) -> None:
        for wkey in [k for k in self.revisable if k[1] + self.plan.windows[k[0]].size <= low - self.plan.window_revise[k[0]]]:
            for bi, group in self.revisable.pop(wkey).groups:
                self._deleted.add(("Q", *wkey, bi, group))
                self._dirty.discard(("Q", *wkey, bi, group))
            self._deleted.add(("R", *wkey))
            self._dirty.discard(("R", *wkey))

    def _empty_windows(self, low: int, ready: set[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
        out = []
        for wi, last in self.evaluated.items():
            window = self.plan.windows[wi]
            step = window.step or window.size
            start = last + step
            # Bounded: after a long outage only the most recent windows matter.
            while start + window.size <= low and len(out) < 1000:
                if (wi, start, EVENTS) not in ready:
                    out.append((wi, start, EVENTS))
                start += step
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

    def changes(self) -> list[Change]:
        """State written since the last call, in the order to store it (value None deletes)."""
        return drain(self._dirty, self._deleted, self._value)

    def _value(self, key: tuple[Any, ...]) -> Any:
        if key[0] == "h":
            return {str(s): dict(h) for s, h in self.horizons.items()}
        if key[0] == "e":
            return {str(wi): start for wi, start in self.evaluated.items()}
        if key[0] == "l":
            start, measures = self.last[key[1:]]
            return {"start": start, "measures": measures}
        if key[0] == "R":
            return {"stale": sorted(self.revisable[key[1:]].stale)}
        if key[0] == "Q":
            _, wi, start, phase, bi, group = key
            pub = self.revisable[(wi, start, phase)].groups[(bi, group)]
            shares = pub.shares
            return {"version": pub.version, "slots": list(pub.slots), "previous": pub.previous,
                    **({"owner": list(shares)} if isinstance(shares, tuple) else {"shares": [[s, at, v] for s, (at, v) in shares.items()]})}
        pending = self.pending[key[1:]]
        enc = self.plan.encode
        out: dict[str, Any] = {"sources": sorted(pending.sources), "groups": [[bi, list(g), enc(v)] for (bi, g), v in pending.groups.items()]}
        if pending.stale:
            out["stale"] = sorted(pending.stale)
        if pending.shares:
            out["shares"] = [[bi, list(g), s, at, v] for (bi, g), shares in pending.shares.items() for s, (at, v) in shares.items()]
        return out

    def load(self, key: str, value: Any) -> None:
        """Restore one stored entry (from ``changes``)."""
        parts = orjson.loads(key)
        if parts[0] == "h":
            for s, h in value.items():
                raise_horizons(self.horizons.setdefault(int(s), {}), self.plan.first_pass_horizons(h) if isinstance(h, int) else h)
        elif parts[0] == "e":
            for wi, start in value.items():
                self.evaluated[int(wi)] = max(start, self.evaluated.get(int(wi), NEVER))
        elif parts[0] == "l":
            _, wi, phase, bi, group = parts
            self.last[(wi, phase, bi, tuple(group))] = (value["start"], value["measures"])
        elif parts[0] == "R":
            _, wi, start, phase = parts
            self.revisable.setdefault((wi, start, phase), RevisableWindow(set())).stale = set(value["stale"])
        elif parts[0] == "Q":
            _, wi, start, phase, bi, group = parts
            rw = self.revisable.setdefault((wi, start, phase), RevisableWindow(set()))
            shares = tuple(value["owner"]) if "owner" in value else {s: (at, v) for s, at, v in value["shares"]}
            previous = tuple(value["previous"]) if value["previous"] is not None else None
            rw.groups[(bi, tuple(group))] = Published(value["version"], array("d", value["slots"]), previous, shares)
        else:
            _, wi, start, phase = parts
            groups = {(bi, tuple(g)): self.plan.decode(v) for bi, g, v in value["groups"]}
            shares: dict[Group, Shares] = {}
            for bi, g, src, at, v in value.get("shares", ()):
                shares.setdefault((bi, tuple(g)), {})[src] = (at, v)
            self.pending[(wi, start, phase)] = PendingWindow(set(value["sources"]), groups, set(value.get("stale", ())), shares)
