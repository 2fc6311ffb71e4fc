"""Prometheus exposition: every metric declared once here; agents only call ``record_*``.

KPI gauges are read at scrape time from the last closed window of each group
(a custom Collector), so a scrape never sees a half-updated window.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from kpi_core.alerting import RULES
from kpi_core.feedback import VERDICTS, FeedbackSet

from kpi_core.plan import SESSIONS, Plan
from kpi_core.results import Snapshot, breakdown_name
from kpi_core.incidents import AlertEvent
from kpi_core.steps import Effects

LabelValues = tuple[str, ...]


class KpiCollector:
    """Last closed window's KPI values, measures, targets and breach flags."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.dims = plan.config.dimensions
        self.values: dict[LabelValues, float] = {}  # (kpi, window, breakdown, *dims)
        self.targets: dict[LabelValues, float] = {}
        self.firing: dict[LabelValues, float] = {}
        self.measures: dict[LabelValues, float] = {}  # (measure, window, breakdown, *dims)
        self.owners: dict[int, set[LabelValues]] = {}  # combine partition -> (window, breakdown, *dims) it exported
        self.settled: dict[LabelValues, int] = {}  # (window, breakdown, *dims) -> start of the last final window shown
        # What /metrics shows (campaigns bounded to the top N), computed when windows close or
        # incidents change (``refresh``), not at every scrape: a scrape only reads it.
        self._view: dict[str, dict[LabelValues, float]] | None = None

    def update(self, snap: Snapshot, owner: int) -> None:
        """Take a closed window's values; a missing KPI removes its series."""
        self._view = None
        group = tuple(snap.group.get(d, "") for d in self.dims)
        where = (snap.window, breakdown_name(snap.dims), *group)
        self.owners.setdefault(owner, set()).add(where)
        session_only = snap.phase == SESSIONS
        # A second version comes when the delayed sources have reported, after newer
        # windows: only what they feed is newer than what is shown. A revision (version 3
        # and on) of a window older than the last one shown that way changes nothing here.
        second = snap.version > 1
        if second:
            shown = self.settled.get(where)
            if shown is not None and snap.start < shown:
                return
            self.settled[where] = snap.start
        delayed = self.plan.delayed_measures
        for name, value in snap.measures.items():
            # The sessions phase comes a session timeout later: its event measures
            # would overwrite the newer windows' values.
            if (not session_only or name in self.plan.session_measures) and (not second or name in delayed):
                self.measures[(name, *where)] = value
        for kpi, value in snap.kpis.items():
            if second and not self.plan.kpi_by_name[kpi].waits:
                continue
            labels = (kpi, *where)
            target_cfg = self.plan.config.targets.get(kpi)
            target = target_cfg.for_group(snap.group) if target_cfg else None
            if value is None:
                self.values.pop(labels, None)
            else:
                self.values[labels] = value
            if target is not None:
                self.targets[labels] = target
                self.firing.setdefault(labels, 0.0)

    def forget(self, owner: int) -> None:
        """Drop the series of groups computed on a partition this worker no longer owns."""
        self._view = None
        gone = self.owners.pop(owner, set())
        for where in gone:
            self.settled.pop(where, None)
        for data in (self.values, self.targets, self.firing, self.measures):
            for labels in [k for k in data if k[1:] in gone]:
                del data[labels]

    def set_firing(self, kpi: str, window: str, dims: tuple[str, ...], group: dict[str, str]) -> None:
        """Mark an incident as firing (e.g. restored from state after a restart)."""
        self._view = None
        self.firing[(kpi, window, breakdown_name(dims), *(group.get(d, "") for d in self.dims))] = 1.0

    def update_alert(self, alert: AlertEvent) -> None:
        """Firing incidents are 1, everything else with a rule 0."""
        self._view = None
        group = tuple(alert.group.get(d, "") for d in self.dims)
        for f in alert.findings:
            self.firing[(f.kpi, alert.window, breakdown_name(alert.dims), *group)] = 1.0 if f.status == "firing" else 0.0

    def refresh(self) -> dict[str, dict[LabelValues, float]]:
        """What /metrics shows, recomputed only if anything changed since the last call."""
        if self._view is None:
            bounded = self._bounded()
            self._view = {name: dict(bounded.get(name, data)) for name, data in (
                ("kpimon_kpi_value", self.values), ("kpimon_kpi_target", self.targets),
                ("kpimon_alert_firing", self.firing), ("kpimon_measure_value", self.measures))}
        return self._view

    def collect(self) -> Iterator[Metric]:
        where = ["window", "breakdown", *self.dims]
        families = (
            ("kpimon_kpi_value", "KPI value of the last closed window", "kpi"),
            ("kpimon_kpi_target", "The KPI's configured target for this group", "kpi"),
            ("kpimon_alert_firing", "1 while an incident is firing for this KPI and group", "kpi"),
            ("kpimon_measure_value", "Raw windowed numerators and denominators, for correct roll-ups", "measure"),
        )
        view = self.refresh()
        for name, doc, first in families:
            family = GaugeMetricFamily(name, doc, labels=[first, *where])
            for labels, value in view[name].items():
                family.add_metric(labels, value)
            yield family

    def _bounded(self) -> dict[str, dict[LabelValues, float]]:
        """Campaign labels bounded to the top N by volume; the rest summed into campaign="other".

        Volume is the first configured measure (impressions in the default catalogue).
        Measures of "other" are sums, and its KPIs are computed from those sums, so
        roll-ups over campaigns stay correct; "other" has no target and no alert series.
        """
        n = self.plan.config.top_campaigns
        if not n or "campaign" not in self.dims:
            return {}
        at = 3 + self.dims.index("campaign")  # (name, window, breakdown, *dims)
        volume_measure = next(iter(self.plan.config.measures))
        volume: dict[str, float] = {}
        for labels, value in list(self.measures.items()):
            if labels[0] == volume_measure and labels[at]:
                volume[labels[at]] = volume.get(labels[at], 0.0) + value
        if len(volume) <= n:
            return {}
        top = set(sorted(volume, key=lambda c: (-volume[c], c))[:n])

        def kept(labels: LabelValues) -> bool:
            return not labels[at] or labels[at] in top

        measures: dict[LabelValues, float] = {}
        others: dict[LabelValues, dict[str, float]] = {}  # (window, breakdown, *dims) with "other" -> measures
        for labels, value in list(self.measures.items()):
            if kept(labels):
                measures[labels] = value
            else:
                other = (*labels[:at], "other", *labels[at + 1 :])
                measures[other] = measures.get(other, 0.0) + value
                others.setdefault(other[1:], {})[labels[0]] = measures[other]
        values = {k: v for k, v in list(self.values.items()) if kept(k)}
        for where, m in others.items():
            for k in self.plan.kpis:
                if not k.kpi.change and all(r in m for r in k.kpi.refs()):
                    value = k.value(m, None)
                    if value is not None:
                        values[(k.name, *where)] = value
        return {
            "kpimon_kpi_value": values,
            "kpimon_kpi_target": {k: v for k, v in list(self.targets.items()) if kept(k)},
            "kpimon_alert_firing": {k: v for k, v in list(self.firing.items()) if kept(k)},
            "kpimon_measure_value": measures,
        }


class FeedbackCollector:
    """What people said about alerts from Slack, read at scrape time from the feedback topic's fold.

    Every worker follows the whole topic, so every worker exports the same cluster-wide
    values: dashboards take ``max`` over workers, not ``sum``.
    """

    def __init__(self, feedback: FeedbackSet) -> None:
        self.feedback = feedback

    def collect(self) -> Iterator[Metric]:
        counts = CounterMetricFamily("kpimon_alert_feedback", "Incidents given each verdict from Slack's buttons "
                                     "(acknowledged, snoozed, silenced, false_alarm), once per incident, by rule", labels=["rule", "verdict"])
        # Every rule's verdicts start at 0, so a rate is defined before the first click.
        found = {(rule, verdict): 0 for rule in RULES for verdict in VERDICTS.values()} | self.feedback.counts()
        for (rule, verdict), n in sorted(found.items()):
            counts.add_metric([rule, verdict], n)
        precision = GaugeMetricFamily("kpimon_alert_precision", "Per rule: incidents not marked a false alarm ÷ incidents shown",
                                      labels=["rule"])
        for rule, p in sorted(self.feedback.precision().items()):
            precision.add_metric([rule], p)
        yield counts
        yield precision


class Metrics:
    """The worker's metrics, on a registry of its own."""

    def __init__(self, plan: Plan, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("kpimon_events", "Valid events consumed, by type", ["type"], registry=r)
        self.invalid = Counter("kpimon_events_invalid", "Events sent to the dead-letter topic, by reason", ["reason"], registry=r)
        self.ignored = Counter("kpimon_messages_ignored", "Tracker messages with no event kpimon uses (a Segment identify call, a GA4 scroll)",
                               ["topic"], registry=r)
        self.late = Counter("kpimon_events_late", "Events later than the allowed lateness (sent to late-events)", registry=r)
        self.restated = Counter("kpimon_reports_restated", "Restated reports (config.arrival restates): replaced the one counted, or older than it (not counted)",
                                ["outcome"], registry=r)
        self.refilled = Counter("kpimon_input_refilled", "Internal messages the Faust stream skipped, read back from Kafka and applied in order", ["topic"], registry=r)
        self.snapshots = Counter("kpimon_snapshots", "Closed-window snapshots published", registry=r)
        self.alerts = Counter("kpimon_alerts", "Alert deliveries, by outcome", ["outcome"], registry=r)
        self.alert_events = Counter("kpimon_alert_events", "Alert events written to the outbox, by kind", ["kind"], registry=r)
        self.clicks = Counter("kpimon_slack_clicks", "Clicks on incident buttons handled here, by outcome "
                              "(applied, repeated, refused, ignored, invalid, failed)", ["outcome"], registry=r)
        self.digests = Counter("kpimon_digests", "Daily digests, by outcome (posted, found: posted before)", ["outcome"], registry=r)
        self.source_time = Gauge("kpimon_source_event_time_seconds",
                                 "Latest event time routed from each source partition (or promised by a progress marker)",
                                 ["topic", "partition"], registry=r)
        self.watermark = Gauge("kpimon_watermark_seconds", "Stage 1's watermark (event time certainly reached), per <app>-events partition",
                               ["partition"], registry=r)
        self.held_by = Gauge("kpimon_watermark_held_by", "1 for the source partition holding a stage-1 partition's watermark back",
                             ["partition", "source"], registry=r)
        self._holders: dict[int, set[str]] = {}
        self.lag = Gauge("kpimon_consumer_lag", "Messages not yet committed: end offset - committed offset", ["topic", "partition"], registry=r)
        self.started = Gauge("kpimon_worker_start_time_seconds", "When this worker started (unix time)", registry=r)
        self.started.set_to_current_time()
        self.kpis = KpiCollector(plan)
        r.register(self.kpis)
        ProcessCollector(registry=r)

    def watch_feedback(self, feedback: FeedbackSet) -> None:
        self.registry.register(FeedbackCollector(feedback))

    def record_watermark(self, partition: int, watermark: int | None, holders: set[str]) -> None:
        """Stage 1's watermark for one partition, and which sources hold it back (e.g. a paused backfill)."""
        p = str(partition)
        if watermark is not None:
            self.watermark.labels(p).set(watermark / 1000)
        for gone in self._holders.get(partition, set()) - holders:
            self.held_by.remove(p, gone)
        for src in holders:
            self.held_by.labels(p, src).set(1)
        self._holders[partition] = holders

    def forget_watermark(self, partition: int) -> None:
        for src in self._holders.pop(partition, set()):
            self.held_by.remove(str(partition), src)
        try:
            self.watermark.remove(str(partition))
        except KeyError:
            pass

    def record_effects(self, fx: Effects, partition: int) -> None:
        """What a stage step made happen (kpi_core/steps.py), once the runner has done it."""
        if fx.late:
            self.late.inc(fx.late)
        for outcome, n in fx.restated.items():
            self.restated.labels(outcome).inc(n)
        for snap in fx.snapshots:
            self.record_snapshot(snap, partition)
        for alert in fx.alerts:
            self.record_alert(alert)
        if fx.watermark is not None:
            self.record_watermark(partition, *fx.watermark)
        if fx.snapshots or fx.alerts:
            self.kpis.refresh()  # the top-N view, once per step that closed windows, not per scrape

    def record_snapshot(self, snap: Snapshot, owner: int) -> None:
        self.kpis.update(snap, owner)
        self.snapshots.inc()

    def record_alert(self, alert: AlertEvent) -> None:
        self.kpis.update_alert(alert)
        self.alert_events.labels(alert.kind).inc()
