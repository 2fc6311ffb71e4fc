"""The two stateful stages as steps that return what must happen, not do it.

A step absorbs a chunk of input messages and returns ``Effects``: records to send, state to write,
the input position it has applied. ``streams/runner.py`` makes them happen, always in the one order
that makes a crash at any point harmless:

1. every record is sent, and acknowledged by Kafka;
2. then the state writes, in list order;
3. then the input position, last, in the same changelog partition as the state.

A crash before 3 replays the step: records go out again (late records and alerts twice, which
downstream drops as repeats by key and sequence; partials, which stage 2 drops by horizon and input
position), and state is rebuilt from what was stored. A crash after 3 loses nothing: everything the
position vouches for is on Kafka. Nothing is written that a record still to be sent depends on.

``Effects`` also carries what happened, for metrics (late count, snapshots, alerts, the watermark);
those are observations, not part of the order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from kpi_core import wire
from kpi_core.aggregate import PartitionAggregator
from kpi_core.alerting import AlertEngine
from kpi_core.combine import ClosedWindow, Combiner
from kpi_core.incidents import AlertEvent
from kpi_core.judge import Judge, from_row, snapshot_row
from kpi_core.plan import Plan
from kpi_core.results import Snapshot
from kpi_core.routing import combine_partition
from kpi_core.state import Change

# The topics a step sends to, by role; the runner maps them to the configured names.
LATE = "late"
PARTIALS = "partials"
SNAPSHOTS = "snapshots"
ALERTS = "alerts"


@dataclass(frozen=True, slots=True)
class Send:
    """One record to send: to a topic role, with an optional key and partition."""

    topic: str
    value: bytes
    key: bytes | None = None
    partition: int | None = None


@dataclass(slots=True)
class Effects:
    """What one step must make happen, in order: ``sends``, then ``writes``, then ``position``."""

    sends: list[Send] = field(default_factory=list)
    writes: list[tuple[str, list[Change]]] = field(default_factory=list)  # (namespace, changes)
    position: int | None = None  # None: no new input applied (a timer step), nothing to store
    # Observations for metrics; not part of the order.
    late: int = 0
    restated: dict[str, int] = field(default_factory=dict)
    snapshots: list[Snapshot] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)
    watermark: tuple[int | None, set[str]] | None = None  # (stage 1's watermark, the sources holding it)


class Stage1:
    """One ``<app>-events`` partition: absorb routed events, close windows, send partials."""

    def __init__(self, plan: Plan, partition: int, partitions: int) -> None:
        self.plan = plan
        self.partition = partition
        self.partitions = partitions
        self.agg = PartitionAggregator(plan, idle_ms=plan.config.idle_timeout)
        self._late: list[Send] = []
        self._events: list[Any] = []  # absorbed, applied at close

    def load(self, key: str, value: Any) -> None:
        self.agg.load(key, value)

    def absorb(self, raw: bytes, now: float) -> None:
        """Take one router bundle (kpi_core.wire); its events are applied at ``close``.

        A step's bundles are applied together: the columnar path then adds a whole step
        per cell at once. Nothing in between reads what ``apply`` changes (the horizon
        moves only at ``close``), so this is the same as applying each bundle on arrival.
        """
        watermarks, backlog, sent_at, events = wire.decode_events(raw)
        self._events += events
        self.agg.report(watermarks, backlog, now, sent_at)

    def _apply(self) -> None:
        events, self._events = self._events, []
        for src, off, etype, ts, data in self.agg.apply(events):
            self._late.append(Send(LATE, orjson.dumps({"type": etype, "ts": ts, **data, "source": src, "offset": off})))

    def close(self, now: float, position: int | None, at: int) -> Effects:
        """Close what the watermark allows and say what must happen.

        ``position`` is the input position to store (None after a timer step with no input);
        ``at`` is the input position applied so far, which orders this partition's revisions at
        stage 2 (a replay never steps back).
        """
        agg = self.agg
        self._apply()
        # Late records go out before the state that marks them applied: a crash in between
        # reports them again rather than never.
        fx = Effects(sends=self._late, position=position, late=len(self._late))
        self._late = []
        fx.restated = {k: n for k, n in agg.restatements.items() if n}
        for k in agg.restatements:
            agg.restatements[k] = 0
        partials = agg.advance(now)
        if partials is not None:
            by_target: dict[int, list[Any]] = defaultdict(list)
            for part in partials:
                by_target[combine_partition(self.plan, part.breakdown, part.group, self.partitions)].append(part)
            # Every stage-2 partition hears the new horizons, with or without partials for it;
            # sent before the new horizon is stored, so a crash sends them again and stage 2
            # drops the repeat.
            horizons = agg.report_horizons()
            fx.sends += [Send(PARTIALS, wire.encode_partials(self.plan, self.partition, horizons, by_target.get(i, []), at), partition=i)
                         for i in range(self.partitions)]
        fx.writes.append(("", agg.changes()))
        wm = agg.watermark.current(now)
        fx.watermark = (wm, agg.watermark.holders(now, wm))
        return fx


class Stage2:
    """One ``<app>-partials`` partition: combine partials, publish snapshots; hand closed windows
    to the judge (partition 0, kpi_core/judge.py), which weighs each whole window and writes alerts."""

    def __init__(self, plan: Plan, partition: int, sources: int) -> None:
        self.plan = plan
        self.partition = partition
        self.combiner = Combiner(plan, sources=sources)
        self.engine = AlertEngine(plan)
        # Stage 2 has as many partitions as stage 1 (topics.partitions): as many hand over to the judge.
        self.judge = Judge(plan, self.engine, sources=sources) if partition == 0 else None
        self._closed: list[ClosedWindow] = []
        self._handed: tuple[Any, ...] | None = None  # the window ends last handed to the judge
        self._reads = (frozenset(self.engine.reads), frozenset(self.engine.rules))
        self._fx = Effects()

    # Namespaces in the stage-2 table. "" : combiner keys stored before namespaces existed.
    def loaders(self) -> dict[str, Any]:
        out = {"c": self.combiner.load, "a": self.engine.load, "": self.combiner.load}
        if self.judge is not None:
            out["j"] = self.judge.load
        return out

    def absorb(self, raw: bytes) -> None:
        """Apply one partials-topic message; snapshots and outbox records wait for ``finish``."""
        kind, body = wire.decode_stage2(self.plan, raw)
        if kind == "judgement":
            assert self.judge is not None, "judgements go to stage-2 partition 0"
            source, horizons, windows = body
            closed = [ClosedWindow(wi, start, phase, [from_row(r) for r in rows], revision) for wi, start, phase, revision, rows in windows]
            self._outbox(self.judge.receive(source, horizons, closed))
            return
        source, horizon, partials, at = body
        self.combiner.receive(source, horizon, partials, at)
        fx = self._fx
        for closed in self.combiner.finalize_windows():
            for snap in closed.snapshots:
                fx.sends.append(Send(SNAPSHOTS, orjson.dumps(snap.to_json()), key=snap.key.encode()))
                fx.snapshots.append(snap)
            self._closed.append(closed)
        if self.partition == 0:  # every partition sees the same progress: one judges the feeds
            self._outbox(self.engine.check_feeds(*self.combiner.reported()))

    def _hand_over(self) -> None:
        """Closed windows and horizons to the judge: at once in partition 0, over Kafka from the others.

        Sent when windows closed, or when the horizons passed a window end (another partition's
        window may wait for this one's word that it has nothing for it).
        """
        lowest = self.combiner.lowest()
        if not lowest or not (self.engine.rules or self.engine.no_data):
            self._closed = []
            return  # nothing to judge
        ends = tuple(sorted((p, wi, (h - w.size) // (w.step or w.size)) for p, h in lowest.items() for wi, w in enumerate(self.plan.windows)))
        if not self._closed and ends == self._handed:
            return
        closed, self._closed = self._closed, []
        self._handed = ends
        if self.judge is not None:
            self._outbox(self.judge.receive(self.partition, lowest, closed))
            return
        measures, kpis = self._reads
        # A group none of whose KPIs has a rule matters only to the no-data check.
        keep = (lambda s: True) if self.engine.no_data else (lambda s: not kpis.isdisjoint(s.kpis))
        rows = [[c.window, c.start, c.phase, c.revision, [snapshot_row(s, measures, kpis) for s in c.snapshots if keep(s)]] for c in closed]
        self._fx.sends.append(Send(PARTIALS, wire.encode_judgement(self.partition, lowest, rows), partition=0))

    def _outbox(self, alerts: Iterable[AlertEvent]) -> None:
        # The outbox: an alert is on Kafka before anyone tries to deliver it.
        for alert in alerts:
            self._fx.sends.append(Send(ALERTS, orjson.dumps(alert.to_json()), key=alert.thread.encode()))
            self._fx.alerts.append(alert)

    def finish(self, position: int | None) -> Effects:
        """What the absorbed messages must make happen.

        The engine's state goes before the judge's and the combiner's: if a crash cuts the step
        after it, the window is finalized and judged again and the engine, which remembers it
        evaluated it, skips it. A crash after the outbox records re-evaluates to the same events
        (same sequence numbers), which delivery skips as duplicates.
        """
        self._hand_over()
        fx, self._fx = self._fx, Effects()
        fx.writes.append(("a", self.engine.changes()))
        if self.judge is not None:
            fx.writes.append(("j", self.judge.changes()))
        fx.writes.append(("c", self.combiner.changes()))
        fx.position = position
        return fx
