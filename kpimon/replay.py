"""``kpimon replay``: the same kpi_core code over a file of events, no Kafka."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from kpi_core.aggregate import Routed
from kpi_core.config import Config
from kpi_core.errors import InvalidEvent
from kpi_core.events import validate
from kpi_core.incidents import AlertEvent
from kpi_core.pipeline import run_all
from kpi_core.plan import Plan
from kpi_core.results import Snapshot, breakdown_name, format_value, iso
from kpimon.producer import read_events


def routed(plan: Plan, rows: Iterator[dict[str, Any]], invalid: dict[str, int]) -> Iterator[Routed]:
    """Validate file rows into pipeline events; count the invalid ones by reason.

    Each event type reads as its topic's partition 0, so each source's own progress
    (late data, config.arrival) is judged as it would be live. A tracker's message
    (docs/formats.md) is read by the config's topic of that format, as live.
    """
    topics = plan.config.topics
    trackers = any(s.format != "kpimon" for s in topics.sources.values())
    for offset, obj in enumerate(rows):
        topic = topics.tracker_topic(obj) if trackers else None
        try:
            if topic is None:
                ev = validate(obj)
                yield (plan.source_of(ev.type), offset, ev.type, ev.ts, ev.data)
                continue
            decoder = plan.decoders[topic]
            events = decoder.indexed(obj)
        except InvalidEvent as exc:
            invalid[exc.reason] = invalid.get(exc.reason, 0) + 1
            continue
        for i, ev in events:
            yield (f"{topic}:0", offset * decoder.fan_out + i, ev.type, ev.ts, ev.data)


def replay_file(path: Path, config: Config, *, fmt: str, out: Console, err: Console) -> list[Snapshot]:
    """Print every closed window (and its alerts) for the events in ``path``."""
    plan = Plan(config)
    invalid: dict[str, int] = {}
    snapshots: list[Snapshot] = []
    alerts: list[AlertEvent] = []
    with Progress(SpinnerColumn(), TextColumn("replay: {task.completed:,} events read"), console=err, transient=True) as bar:
        task = bar.add_task("replay", total=None)

        def rows() -> Iterator[dict[str, Any]]:
            for n, obj in enumerate(read_events(path), 1):
                if n % 50_000 == 0:
                    bar.update(task, completed=n)
                yield obj

        late: list[Routed] = []
        restated: dict[str, int] = {}
        for item in run_all(plan, routed(plan, rows(), invalid), late=late, restated=restated):
            if isinstance(item, AlertEvent):
                alerts.append(item)
                if fmt == "jsonl":
                    print(orjson.dumps({"alert": item.to_json()}).decode())
                continue
            snapshots.append(item)
            if fmt == "jsonl":
                print(orjson.dumps({"snapshot": item.to_json()}).decode())
    if fmt == "jsonl":
        for _, _, etype, ts, data in late:
            print(orjson.dumps({"late": {"type": etype, "ts": ts, **data}}).decode())
    if fmt == "table":
        _table(plan, snapshots, alerts, out)
    if invalid:
        err.print("invalid events skipped: " + ", ".join(f"{r}={n}" for r, n in sorted(invalid.items())))
    if any(restated.values()):
        err.print(f"restated reports: {restated['replaced']} replaced the report counted for their key, "
                  f"{restated['outdated']} were older versions than it and were not counted")
    revised = sum(1 for snap in snapshots if snap.version > 2)
    if revised:
        err.print(f"revisions: {revised} snapshots published again (version 3 and on) by data that came after "
                  f"their window's final version, within its source's revise_for")
    if late:
        by_type: dict[str, int] = {}
        for _, _, etype, _, _ in late:
            by_type[etype] = by_type.get(etype, 0) + 1
        err.print("late events not counted (more than allowed_lateness behind the file's event time when read; "
                  "live they go to late-events): " + ", ".join(f"{t}={n}" for t, n in sorted(by_type.items())))
    return snapshots


def _table(plan: Plan, snapshots: list[Snapshot], alerts: list[AlertEvent], out: Console) -> None:
    units = {k.name: k.kpi.unit for k in plan.kpis}
    table = Table(title="closed windows")
    for col in ("window", "start", "breakdown", "group", "kpi", "value", "status"):
        table.add_column(col)
    for snap in snapshots:
        # A second version repeats the fast KPIs unchanged: show only what it settles.
        final = "final" if snap.version < 3 else f"revised (version {snap.version})"
        rows = [(k, v, final) for k, v in snap.kpis.items() if snap.version == 1 or plan.kpi_by_name[k].waits]
        waiting = ", ".join(snap.waiting_for)
        rows += [(k, v, f"provisional (waits for {waiting})") for k, v in snap.provisional.items()]
        for kpi, value, note in rows:
            table.add_row(
                snap.window,
                iso(snap.start),
                breakdown_name(snap.dims),
                ",".join(snap.group.values()) or "all",
                kpi,
                "missing" if value is None else format_value(value, units[kpi]),
                note,
            )
    out.print(table)
    if alerts:
        table = Table(title="alerts that would have fired")
        for col in ("window", "start", "group", "event", "severity", "kpis"):
            table.add_column(col)
        for a in alerts:
            kpis = ", ".join(f"{f.kpi} {'ok' if f.status == 'resolved' else format_value(f.value or 0.0, f.unit)}" for f in a.findings)
            table.add_row(a.window, iso(a.start), ",".join(a.group.values()) or "all", a.kind, a.severity, kpis)
        out.print(table)
