"""``kpimon backtest``: what a config's alert rules would have done on a history.

The history is either events (run through the same two stages as ``kpimon replay``) or
``kpi-snapshots`` records (what kpimon publishes; a warehouse's hourly table in that shape,
or ``kpimon history``'s simulation): the KPIs are computed from their measures with the
config, and the alert engine judges the windows in time order, exactly as the worker would.

With labels (``{"campaign", "kpi", "start", "end"}`` per known incident, epoch ms or ISO),
each alert is matched to the incident of its group and KPI it falls in: precision, recall,
and the delay from an incident's start to its first alert. Charts (PNG, matplotlib) show an
alerting group's KPI against the baseline's expected range, with its alerts and labels.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

from kpi_core.alerting import AlertEngine
from kpi_core.errors import KpimonError
from kpi_core.incidents import AlertEvent
from kpi_core.pipeline import run_all
from kpi_core.plan import EVENTS, Plan
from kpi_core.results import Snapshot, breakdown_name

WEEK = 7 * 86_400_000


def _ms(value: Any) -> int:
    if isinstance(value, (int, float)):
        return int(value)
    return _iso_ms(str(value))


@lru_cache(maxsize=4096)  # every group of a window has the same start
def _iso_ms(value: str) -> int:
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Alert:
    """One incident opening: a rule's KPI began firing for a group in a window."""

    kpi: str
    window: str
    group: tuple[tuple[str, str], ...]
    start: int


@dataclass(frozen=True, slots=True)
class Label:
    group: tuple[tuple[str, str], ...]
    kpi: str
    start: int
    end: int
    shape: str = ""


@dataclass(slots=True)
class Series:
    """One group's KPI per window, with the expected range where the baseline had one (charts)."""

    starts: list[int] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    ranges: list[tuple[float, float] | None] = field(default_factory=list)


@dataclass(slots=True)
class Outcome:
    alerts: list[Alert]
    windows: int  # distinct window starts judged
    groups: int
    span_ms: int
    series: dict[tuple[str, tuple[tuple[str, str], ...]], Series]


def read_labels(path: Path) -> list[Label]:
    out = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = orjson.loads(line)
            group = raw.get("group") or {"campaign": raw["campaign"]}
            out.append(Label(tuple(sorted(group.items())), raw["kpi"], _ms(raw["start"]), _ms(raw["end"]), raw.get("shape", "")))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise KpimonError(f"{path}:{n}: not a label ({{campaign or group, kpi, start, end}}): {exc}") from None
    return out


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                raw = orjson.loads(line)
                yield raw.get("snapshot", raw) if isinstance(raw, dict) else raw


def is_snapshot_file(path: Path) -> bool:
    first = next(_records(path), None)
    return isinstance(first, dict) and "measures" in first and "window" in first


def _snapshot_windows(plan: Plan, records: Iterable[dict[str, Any]]) -> Iterator[tuple[int, int, list[Snapshot]]]:
    """Snapshot records as closed windows, in time order (the records must be in it)."""
    names = {w.name: i for i, w in enumerate(plan.windows)}
    breakdowns = {breakdown_name(tuple(b)): tuple(b) for b in plan.breakdowns}

    def snapshot(raw: dict[str, Any]) -> tuple[int, int, Snapshot] | None:
        wi, dims = names.get(raw["window"]), breakdowns.get(raw["breakdown"])
        if wi is None or dims is None or raw.get("phase", EVENTS) != EVENTS:
            return None  # a window or breakdown this config does not have
        start = _ms(raw["start"])
        measures = {m: float(raw["measures"].get(m, 0.0)) for m in plan.config.measures}
        return wi, start, Snapshot(raw["window"], start, start + plan.windows[wi].size, dims, dict(raw["group"]), EVENTS,
                                   measures, plan.kpi_values(measures, EVENTS))

    parsed = (s for s in map(snapshot, records) if s is not None)
    for (wi, start), batch in itertools.groupby(parsed, key=lambda x: (x[0], x[1])):
        yield wi, start, [s for _, _, s in batch]


def judge(plan: Plan, path: Path, *, series_for: set[str] | None = None) -> Outcome:
    """Every incident opening the config's rules give on the history in ``path``."""
    if is_snapshot_file(path):
        return judge_records(plan, _records(path), series_for=series_for)
    from kpimon.producer import read_events
    from kpimon.replay import routed  # the replay reader: the same validation

    return _outcome(AlertEngine(plan), run_all(plan, routed(plan, read_events(path), {})), series_for)


def judge_records(plan: Plan, records: Iterable[dict[str, Any]], *, series_for: set[str] | None = None) -> Outcome:
    """Every incident opening the config's rules give on ``kpi-snapshots`` records, in time order."""
    engine = AlertEngine(plan)
    return _outcome(engine, _judge_snapshots(plan, engine, records), series_for)


def _outcome(engine: AlertEngine, outputs: Iterable[Snapshot | AlertEvent], series_for: set[str] | None) -> Outcome:
    firing: dict[str, set[str]] = defaultdict(set)  # thread -> KPIs firing
    alerts: list[Alert] = []
    series: dict[tuple[str, tuple[tuple[str, str], ...]], Series] = {}
    starts: set[int] = set()
    groups: set[tuple[tuple[str, str], ...]] = set()
    first = last = None
    for item in outputs:
        if isinstance(item, Snapshot):
            key = tuple(sorted(item.group.items()))
            starts.add(item.start)
            groups.add(key)
            first = item.start if first is None else min(first, item.start)
            last = item.end if last is None else max(last, item.end)
            for kpi in series_for or ():
                if kpi in item.kpis:
                    s = series.setdefault((kpi, key), Series())
                    s.starts.append(item.start)
                    s.values.append(item.kpis[kpi])
                    s.ranges.append(engine.expected_range(kpi, item))
            continue
        now = {f.kpi for f in item.findings if f.status == "firing"}
        for kpi in sorted(now - firing[item.thread]):
            alerts.append(Alert(kpi, item.window, tuple(sorted(item.group.items())), item.start))
        firing[item.thread] = now
    return Outcome(alerts, len(starts), len(groups), (last - first) if first is not None and last is not None else 0, series)


def _judge_snapshots(plan: Plan, engine: AlertEngine, records: Iterable[dict[str, Any]]) -> Iterator[Snapshot | AlertEvent]:
    for wi, start, snaps in _snapshot_windows(plan, records):
        # Charts ask the engine for the range it used: before it learns this window.
        yield from snaps
        yield from engine.evaluate(wi, start, EVENTS, snaps)


def score(outcome: Outcome, labels: list[Label] | None) -> dict[str, dict[str, Any]]:
    """Per rule (KPI): alerts, alerts per group-week, and with labels precision, recall and delays."""
    weeks = max(outcome.span_ms / WEEK, 1e-9)
    out: dict[str, dict[str, Any]] = {}
    for kpi in sorted({a.kpi for a in outcome.alerts} | {lb.kpi for lb in labels or ()}):
        mine = [a for a in outcome.alerts if a.kpi == kpi]
        row: dict[str, Any] = {"alerts": len(mine), "alerts_per_group_week": len(mine) / max(outcome.groups, 1) / weeks}
        if labels is not None:
            marks = [lb for lb in labels if lb.kpi == kpi]
            by_group: dict[tuple[tuple[str, str], ...], list[Label]] = defaultdict(list)
            for lb in marks:
                by_group[lb.group].append(lb)
            matched = [a for a in mine if any(lb.start <= a.start < lb.end for lb in by_group.get(a.group, ()))]
            false = len(mine) - len(matched)
            delays: dict[str, list[int | None]] = defaultdict(list)
            for lb in marks:
                hits = [a.start - lb.start for a in mine if a.group == lb.group and lb.start <= a.start < lb.end]
                delays[lb.shape].append(min(hits) if hits else None)
            row.update(
                labelled=len(marks), matched=len(matched), false=false,
                precision=len(matched) / len(mine) if mine else None,
                recall={shape: sum(d is not None for d in ds) / len(ds) for shape, ds in sorted(delays.items())},
                mean_delay_ms={shape: (sum(d for d in ds if d is not None) / max(1, sum(d is not None for d in ds)))
                               for shape, ds in sorted(delays.items())},
                delays_ms={shape: ds for shape, ds in sorted(delays.items())},
            )
        out[kpi] = row
    return out


def without_fdr(plan: Plan) -> Plan:
    """The same config with false-discovery control off: every breach judged on its own evidence."""
    cfg = plan.config
    return Plan(cfg.model_copy(update={"alerting": cfg.alerting.model_copy(update={"fdr": None})}))


def _related(a: tuple[tuple[str, str], ...], b: tuple[tuple[str, str], ...]) -> bool:
    """One group lies within the other (campaign X and campaign X on iOS; the total and anything)."""
    da, db = dict(a), dict(b)
    return (da.items() <= db.items()) or (db.items() <= da.items())


def discoveries(outcome: Outcome, labels: list[Label] | None, window_ms: int, *, within: int = 2) -> dict[str, Any]:
    """False-discovery figures: how many windows hold any incident opening, how many openings
    are false (outside every label), and with labels, how many were caught within ``within``
    windows of their start by exactly one incident, on their own group.

    An opening belongs to a label when it is of the label's KPI, on its group or one within or
    around it, and starts before the label ends (plus ``within`` windows).
    """
    alerts = outcome.alerts
    out: dict[str, Any] = {
        "windows": outcome.windows,
        "windows_with_alert": len({a.start for a in alerts}),
        "incidents": len(alerts),
    }
    out["share_of_windows_with_alert"] = out["windows_with_alert"] / max(outcome.windows, 1)
    if labels is None:
        out["false_incidents"] = len(alerts)
        return out
    caught, single, owned = 0, 0, set()
    for lb in labels:
        mine = [a for a in alerts if a.kpi == lb.kpi and _related(a.group, lb.group) and lb.start <= a.start < lb.end + within * window_ms]
        owned.update(id(a) for a in mine)
        if any(a.group == lb.group and a.start < lb.start + within * window_ms for a in mine):
            caught += 1
        if len(mine) == 1 and mine[0].group == lb.group:
            single += 1
    out.update(labelled=len(labels), detected=caught, recall=caught / len(labels) if labels else None,
               one_incident_each=single, false_incidents=sum(id(a) not in owned for a in alerts))
    return out


def false_per_10_group_weeks(outcome: Outcome, scores: dict[str, dict[str, Any]]) -> float:
    weeks = outcome.span_ms / WEEK
    return sum(r.get("false", 0) for r in scores.values()) / max(outcome.groups * weeks / 10, 1e-9)


def charts(outcome: Outcome, labels: list[Label] | None, directory: Path, *, limit: int = 12) -> list[Path]:
    """One PNG per alerting group and KPI (the first ``limit``): the KPI, its expected range, alerts, labels."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font cache note is not news
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    alerting = sorted({(a.kpi, a.group) for a in outcome.alerts})[:limit]
    for kpi, group in alerting:
        s = outcome.series.get((kpi, group))
        if s is None:
            continue
        x = [datetime.utcfromtimestamp(t / 1000) for t in s.starts]
        fig, ax = plt.subplots(figsize=(11, 3.2), dpi=90)
        lo = [r[0] if r else float("nan") for r in s.ranges]
        hi = [r[1] if r else float("nan") for r in s.ranges]
        ax.fill_between(x, lo, hi, color="tab:blue", alpha=0.2, linewidth=0, label="expected range")
        ax.plot(x, [v if v is not None else float("nan") for v in s.values], color="black", linewidth=0.7, label=kpi)
        for lb in labels or ():
            if lb.kpi == kpi and lb.group == group:
                ax.axvspan(datetime.utcfromtimestamp(lb.start / 1000), datetime.utcfromtimestamp(lb.end / 1000), color="orange", alpha=0.3)
        at = [datetime.utcfromtimestamp(a.start / 1000) for a in outcome.alerts if a.kpi == kpi and a.group == group]
        index = {t: i for i, t in enumerate(s.starts)}
        ys = [s.values[index[a.start]] for a in outcome.alerts if a.kpi == kpi and a.group == group and a.start in index]
        ax.scatter(at[: len(ys)], ys, color="red", zorder=3, s=18, label="alert opened")
        name = ",".join(f"{k}={v}" for k, v in group) or "total"
        ax.set_title(f"{kpi} · {name}")
        ax.legend(loc="upper right", fontsize=7)
        fig.tight_layout()
        path = directory / f"{kpi}__{name.replace('/', '_').replace('=', '-').replace(',', '_')}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
