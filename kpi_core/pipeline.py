"""The whole computation in one process: stage 1 and stage 2 back to back.

``kpimon replay`` runs this over a file; the live worker runs the same two stages
split across Kafka partitions. Both give the same snapshots for the same events.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from kpi_core.aggregate import FOREVER, NEVER, PartitionAggregator, Routed
from kpi_core.alerting import AlertEngine
from kpi_core.incidents import AlertEvent
from kpi_core.combine import Combiner
from kpi_core.plan import Plan
from kpi_core.results import Snapshot

SOURCE = "replay"

Output = Snapshot | AlertEvent


class LocalPipeline:
    """Feed events in event-time order (within the lateness); get closed windows and alerts out."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.stage1 = PartitionAggregator(plan, idle_ms=plan.config.idle_timeout)
        self.stage2 = Combiner(plan, sources=1)
        self.alerts = AlertEngine(plan)
        self.late: list[Routed] = []
        self.latest = NEVER
        self.revised = 0  # snapshots published again by a revision (version 3 and on)
        self._batches = 0  # stands in for stage 1's input position

    def feed(self, events: Iterable[Routed]) -> list[Output]:
        """Absorb a batch; return the snapshots and alerts of windows it closed."""
        batch = list(events)
        self.late += self.stage1.apply(batch)
        progress: dict[str, int] = {}  # each source's largest event time in the batch (what observe keeps)
        for src, _, _, ts, _ in batch:
            if ts > progress.get(src, NEVER):
                progress[src] = ts
        for src, ts in progress.items():
            self.stage1.observe(src, ts, None)
            self.latest = max(self.latest, ts)
        return self._advance(None)

    def finish(self) -> list[Output]:
        """Close every open window, as if event time ran on forever."""
        return self._advance(FOREVER)

    def _advance(self, force: int | None) -> list[Output]:
        partials = self.stage1.advance(None, force=force)
        if partials is None:
            return []
        self._batches += 1
        self.stage2.receive(0, self.stage1.report_horizons(), partials, self._batches)
        out: list[Output] = []
        for closed in self.stage2.finalize_windows(empty_until=self.latest):
            out += closed.snapshots
            self.revised += len(closed.snapshots) if closed.revision else 0
            out += self.alerts.judge(closed)
        if force is None:  # the end of a replay is not a feed falling behind
            out += self.alerts.check_feeds(*self.stage2.reported())
        return out


def run_all(plan: Plan, events: Iterable[Routed], *, batch: int = 10_000, late: list[Routed] | None = None,
            restated: dict[str, int] | None = None) -> Iterator[Output]:
    """Every snapshot and alert event for a finite stream of events, in window order.

    Events too late to count are appended to ``late`` (when given) as they are found;
    ``restated`` (when given) gets the tally of restated reports, replaced and outdated.
    """
    pipe = LocalPipeline(plan)
    if late is not None:
        pipe.late = late
    if restated is not None:
        pipe.stage1.restatements = restated
        restated.update(replaced=0, outdated=0)
    buf: list[Routed] = []
    for ev in events:
        buf.append(ev)
        if len(buf) >= batch:
            yield from pipe.feed(buf)
            buf = []
    yield from pipe.feed(buf)
    yield from pipe.finish()


def run(plan: Plan, events: Iterable[Routed], *, batch: int = 10_000) -> Iterator[Snapshot]:
    """Every snapshot for a finite stream of events, in window order."""
    return (x for x in run_all(plan, events, batch=batch) if isinstance(x, Snapshot))
