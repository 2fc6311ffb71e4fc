"""Generate kpimon's Grafana dashboards as JSON (no Grafana library needed).

    python deploy/tools/dashboards.py           # (re)write deploy/grafana/dashboards/*.json
    python deploy/tools/dashboards.py --check   # exit 1 if the committed JSON is stale

Edit the dashboards here, never the JSON: tests/deploy compares the committed files
with this script's output, and tests/integration/test_dashboards.py runs every query
below against a real worker and a real Prometheus.

Ratio roll-ups (channel and global CTR, CPC, conversion rate) come from the recording
rules in deploy/prometheus/rules/kpimon-recording.yml, which divide sums of numerators
by sums of denominators; a dashboard never averages ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "deploy" / "grafana" / "dashboards"

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # provisioned in deploy/grafana/provisioning
SCHEMA_VERSION = 39  # Grafana 10.x / 11.x
GRID_WIDTH = 24

Json = dict[str, Any]


# -- targets and template variables -------------------------------------------


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> Json:
    """One PromQL query of a panel; ``refId`` is filled in by ``panel``."""
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "format": "table" if table else "time_series",
    }


def query_variable(name: str, label: str, query: str, *, multi: bool = False, description: str = "") -> Json:
    """A variable filled from ``label_values(...)``; multi-value ones offer All (a regex of every value)."""
    return {
        "name": name,
        "label": label,
        "description": description,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": query,  # a string: Grafana migrates it to whatever its variable editor uses
        "refresh": 2,  # on time range change, so new campaigns show up
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "current": {},
        "options": [],
        "regex": "",
        "hide": 0,
        "skipUrlSync": False,
    }


def annotation(name: str, expr: str, *, title: str, text: str, tags: Sequence[str], color: str, step: str = "") -> Json:
    """Prometheus annotations: one per returned step, merged into regions while the series lasts."""
    return {
        "name": name,
        "datasource": DATASOURCE,
        "enable": True,
        "hide": False,
        "iconColor": color,
        "expr": expr,
        "step": step,
        "titleFormat": title,
        "textFormat": text,
        "tagKeys": ",".join(tags),
        "useValueForTime": False,
    }


BUILTIN_ANNOTATIONS = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}


# -- panels -------------------------------------------------------------------


def panel(kind: str, title: str, targets: Sequence[Json], *, w: int, h: int, description: str = "", **extra: Any) -> Json:
    """A panel of any ``kind``; position and id are assigned by ``layout``."""
    refs = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": h, "w": w, "x": 0, "y": 0},
        "targets": [{**t, "refId": refs[i]} for i, t in enumerate(targets)],
        **extra,
    }


def field_config(unit: str, *, decimals: int | None = None, min_: float | None = None, overrides: Sequence[Json] = (),
                 thresholds: Sequence[tuple[float | None, str]] = ((None, "green"),), custom: Json | None = None) -> Json:
    defaults: Json = {
        "unit": unit,
        "thresholds": {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in thresholds]},
        "color": {"mode": "palette-classic"},
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    if min_ is not None:
        defaults["min"] = min_
    if custom is not None:
        defaults["custom"] = custom
    return {"defaults": defaults, "overrides": list(overrides)}


def timeseries(title: str, targets: Sequence[Json], *, unit: str = "short", w: int = 12, h: int = 8, description: str = "",
               decimals: int | None = None, min_: float | None = 0, stack: bool = False, overrides: Sequence[Json] = (),
               **extra: Any) -> Json:
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10 if stack else 0,
        "showPoints": "never",
        "spanNulls": True,  # a KPI gauge only changes when a window closes
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    return panel(
        "timeseries", title, targets, w=w, h=h, description=description,
        fieldConfig=field_config(unit, decimals=decimals, min_=min_, overrides=overrides, custom=custom),
        options={
            "legend": {"displayMode": "table", "placement": "right", "showLegend": True, "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        **extra,
    )


def stat(title: str, targets: Sequence[Json], *, unit: str = "short", w: int = 6, h: int = 4, description: str = "",
         decimals: int | None = None, thresholds: Sequence[tuple[float | None, str]] = ((None, "green"),)) -> Json:
    return panel(
        "stat", title, targets, w=w, h=h, description=description,
        fieldConfig=field_config(unit, decimals=decimals, thresholds=thresholds),
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
            "orientation": "auto",
        },
    )


def table(title: str, targets: Sequence[Json], *, w: int = 24, h: int = 8, description: str = "",
          hide: Iterable[str] = (), rename: dict[str, str] | None = None, unit: str = "short", decimals: int | None = None) -> Json:
    """An instant table; the targets' results are merged on their labels, one row per series."""
    return panel(
        "table", title, targets, w=w, h=h, description=description,
        fieldConfig=field_config(unit, decimals=decimals),
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {name: True for name in hide}, "renameByName": rename or {}}},
        ],
    )


def row(title: str) -> Json:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": 0}}


def dashed(pattern: str) -> Json:
    """An override that draws series whose name matches ``pattern`` (a regex) as dashed lines."""
    return {
        "matcher": {"id": "byRegexp", "options": pattern},
        "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
    }


def layout(panels: Sequence[Json]) -> list[Json]:
    """Place panels left to right, wrapping at the grid width, and number them from 1."""
    x = y = row_height = 0
    out = []
    for i, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if p["type"] == "row" or x + w > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        out.append({**p, "id": i, "gridPos": {"h": h, "w": w, "x": x, "y": y}})
        x, row_height = x + w, max(row_height, h)
        if p["type"] == "row":
            x, y, row_height = 0, y + h, 0
    return out


def dashboard(*, uid: str, title: str, description: str, panels: Sequence[Json], variables: Sequence[Json],
              annotations: Sequence[Json] = (), time_from: str = "now-3h", refresh: str = "30s") -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["kpimon"],
        "editable": False,
        "graphTooltip": 1,  # shared crosshair
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "",
        "refresh": refresh,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [{"title": "kpimon", "type": "dashboards", "tags": ["kpimon"], "asDropdown": False, "includeVars": False, "keepTime": True}],
        "annotations": {"list": [BUILTIN_ANNOTATIONS, *annotations]},
        "templating": {"list": list(variables)},
        "panels": layout(panels),
    }


# -- Campaign KPIs --------------------------------------------------------------

#: Ratio KPIs rolled up by the recording rules: (record name part, title, Grafana unit).
ROLLUPS = (
    ("ctr", "CTR", "percentunit"),
    ("cpc", "CPC", "currencyUSD"),
    ("conversion_rate", "Conversion rate", "percentunit"),
)


def campaign_kpis() -> Json:
    """KPIs per campaign against their targets, channel and global roll-ups, breaches and incidents."""
    win = 'window="$window"'
    campaign_sel = f'{win}, breakdown="campaign", campaign=~"$campaign"'
    variables = [
        query_variable("window", "Window", "label_values(kpimon_kpi_value, window)",
                       description="The KPI window size (kpimon.yaml windows)"),
        query_variable("campaign", "Campaign", f'label_values(kpimon_kpi_value{{{win}, breakdown="campaign"}}, campaign)', multi=True),
        query_variable("channel", "Channel", f'label_values(kpimon_kpi_value{{{win}, breakdown="channel"}}, channel)', multi=True),
        query_variable("kpi", "KPI", f"label_values(kpimon_kpi_value{{{win}}}, kpi)", multi=True,
                       description="One panel per selected KPI in the first row"),
    ]
    firing = f"kpimon_alert_firing{{{win}}}"
    # A change is the value now against the value one step earlier ($__interval is the step).
    # Grafana draws only points whose value is above 0, so each expression returns a 1.
    annotations = [
        annotation(
            "KPI incidents", f"{firing} == 1",
            title="{{kpi}} off target", text="{{breakdown}} {{campaign}}{{channel}}", tags=["kpi", "breakdown", "campaign", "channel"],
            color="red",
        ),
        annotation(
            "Incident opened", f"{firing} == 1 unless {firing} offset $__interval == 1",
            title="{{kpi}} incident opened", text="{{breakdown}} {{campaign}}{{channel}}", tags=["kpi", "campaign", "channel"],
            color="orange",
        ),
        annotation(
            "Incident resolved", f"{firing} offset $__interval == 1 and {firing} == 0",
            title="{{kpi}} incident resolved", text="{{breakdown}} {{campaign}}{{channel}}", tags=["kpi", "campaign", "channel"],
            color="green",
        ),
    ]
    panels = [
        row("KPIs by campaign vs target"),
        timeseries(
            "$kpi by campaign",
            [
                target(f'kpimon_kpi_value{{kpi="$kpi", {campaign_sel}}}', "{{campaign}}"),
                target(f'kpimon_kpi_target{{kpi="$kpi", {campaign_sel}}}', "target {{campaign}}"),
            ],
            w=24, h=9, decimals=4, min_=None, overrides=[dashed("^target .*")],
            description="Each closed window's value (solid) against the campaign's target (dashed). "
                        "Ratio KPIs are fractions: 0.02 is 2%.",
            repeat="kpi", repeatDirection="h", maxPerRow=2,
        ),
        row("Channel roll-ups (sum of numerators / sum of denominators)"),
        *[
            timeseries(
                f"{title} by channel",
                [target(f'window_channel:kpimon_{name}:ratio{{{win}, channel=~"$channel"}}', "{{channel}}")],
                unit=unit, w=8, decimals=2,
                description=f"Recording rule window_channel:kpimon_{name}:ratio: per-channel numerators summed, divided by "
                            "the summed denominators. Never an average of campaign ratios.",
            )
            for name, title, unit in ROLLUPS
        ],
        row("Global"),
        *[
            stat(
                f"Global {title}",
                [target(f"window:kpimon_{name}:ratio{{{win}}}", title)],
                unit=unit, w=6, decimals=2,
                description=f"Recording rule window:kpimon_{name}:ratio: every campaign's numerator summed, divided by the "
                            "summed denominators.",
            )
            for name, title, unit in ROLLUPS
        ],
        stat(
            "Firing incidents",
            [target(f"sum(kpimon_alert_firing{{{win}}})", "firing")],
            w=6, thresholds=((None, "green"), (1, "red")),
            description="KPI groups whose incident is firing right now (kpimon_alert_firing == 1)",
        ),
        row("Breaching KPIs"),
        table(
            "KPIs off target now",
            [
                target(f"kpimon_alert_firing{{{win}}} == 1", instant=True, table=True),
                target(f"kpimon_kpi_value{{{win}}} and (kpimon_alert_firing{{{win}}} == 1)", instant=True, table=True),
                target(f"kpimon_kpi_target{{{win}}} and (kpimon_alert_firing{{{win}}} == 1)", instant=True, table=True),
            ],
            # One row per firing group (A); its last value (B) and target (C) are merged in on the labels.
            hide=("Time", "__name__", "job", "instance", "window", "Value #A"),
            rename={"Value #B": "value", "Value #C": "target"},
            decimals=4,
            description="Every KPI group whose incident is firing (kpimon_alert_firing == 1), with its last value and target.",
        ),
        row("Alert quality (Slack feedback)"),
        timeseries(
            "Precision by rule",
            [target("max by (rule) (kpimon_alert_precision)", "{{rule}}")],
            unit="percentunit", w=12, decimals=2, min_=0,
            description="Incidents not marked a false alarm from Slack, divided by incidents shown, per rule. Every worker "
                        "exports the same cluster-wide value (from the feedback topic), hence max, not sum.",
        ),
        timeseries(
            "Feedback by verdict",
            [target("max by (rule, verdict) (kpimon_alert_feedback_total)", "{{rule}} {{verdict}}")],
            w=12, decimals=0, min_=0,
            description="Incidents acknowledged, snoozed, silenced or closed as a false alarm from Slack's buttons, once per incident.",
        ),
    ]
    return dashboard(
        uid="kpimon-campaign-kpis",
        title="kpimon / Campaign KPIs",
        description="Marketing KPIs per campaign and channel from kpimon, against their targets.",
        panels=panels, variables=variables, annotations=annotations,
    )


# -- Pipeline health ------------------------------------------------------------

LAG = "kpimon_consumer_lag"  # end offset minus committed offset, per topic partition
START_TIME = "kpimon_worker_start_time_seconds"


def pipeline_health() -> Json:
    """Throughput, lag, bad input, snapshots, alert delivery, restarts and memory of the workers."""
    inst = 'instance=~"$instance"'
    ri = "$__rate_interval"
    variables = [
        query_variable("instance", "Worker", "label_values(kpimon_snapshots_total, instance)", multi=True,
                       description="kpimon worker instances (scrape targets)"),
    ]
    panels = [
        row("Throughput"),
        stat("Workers up", [target('sum(up{job="kpimon"})', "up")], w=4,
             thresholds=((None, "red"), (1, "green")), description="Scrape targets of job kpimon that answer"),
        stat("Events/s", [target(f"sum(rate(kpimon_events_total{{{inst}}}[{ri}]))", "events/s")], unit="ops", w=4, decimals=1),
        stat(
            "Dead-letter share (5m)",
            [target(f"sum(rate(kpimon_events_invalid_total{{{inst}}}[5m])) / (sum(rate(kpimon_events_invalid_total{{{inst}}}[5m])) "
                    f"+ (sum(rate(kpimon_events_total{{{inst}}}[5m])) or vector(0)))", "invalid")],
            unit="percentunit", w=4, decimals=2, thresholds=((None, "green"), (0.05, "red")),
            description="Rejected messages as a share of all consumed (KpimonDeadLetterRate fires above 5%)",
        ),
        stat("Total consumer lag", [target(f"sum({LAG}{{{inst}}})", "lag")], w=4,
             thresholds=((None, "green"), (10000, "orange")), description="Messages not yet consumed, over all partitions"),
        stat("Uptime", [target(f"time() - max({START_TIME}{{{inst}}})", "uptime")], unit="s", w=4,
             description="Since the youngest worker started"),
        stat("Restarts (1h)", [target(f"sum(changes(process_start_time_seconds{{{inst}}}[1h]))", "restarts")], w=4,
             thresholds=((None, "green"), (1, "orange")), description="Worker process restarts in the last hour"),
        timeseries("Events/s by type", [target(f"sum by (type) (rate(kpimon_events_total{{{inst}}}[{ri}]))", "{{type}}")],
                   unit="ops", stack=True),
        timeseries(
            "Consumer lag by partition",
            [target(f"max by (topic, partition) ({LAG}{{{inst}}})", "{{topic}}/{{partition}}")],
            description="Committed offset behind the end offset, per topic partition",
        ),
        row("Event time"),
        timeseries(
            "Event-time lag by source",
            [target(f"time() - max by (topic) (kpimon_source_event_time_seconds{{{inst}}})", "{{topic}}")],
            unit="s", w=8,
            description="How far each source's latest event (or progress marker) is behind the wall clock; a backfill or a stalled feed stands out",
        ),
        timeseries(
            "Watermark lag by partition",
            [target(f"time() - max by (partition) (kpimon_watermark_seconds{{{inst}}})", "events/{{partition}}")],
            unit="s", w=8,
            description="Event time every source has certainly reached, behind the wall clock; windows close lateness after it passes their end",
        ),
        table(
            "Sources holding the watermark",
            [target(f"max by (partition, source) (kpimon_watermark_held_by{{{inst}}})", instant=True, table=True)],
            w=8,
            description="Historical data holds windows open while it is quiet (a paused backfill loses nothing); "
                        "close a finished backfill with kpimon produce --complete (progress markers)",
        ),
        row("Bad input"),
        timeseries(
            "Late and invalid events/s",
            [
                target(f"sum(rate(kpimon_events_late_total{{{inst}}}[{ri}]))", "late"),
                target(f"sum by (reason) (rate(kpimon_events_invalid_total{{{inst}}}[{ri}]))", "invalid: {{reason}}"),
            ],
            unit="ops", w=24,
            description="Late events go to the late-events topic, invalid ones to dead-letters (with the reason in headers)",
        ),
        row("Snapshots and alerts"),
        timeseries(
            "Snapshots and alert events/s",
            [
                target(f"sum(rate(kpimon_snapshots_total{{{inst}}}[{ri}]))", "snapshots"),
                target(f"sum by (kind) (rate(kpimon_alert_events_total{{{inst}}}[{ri}]))", "alert events: {{kind}}"),
            ],
            unit="ops", w=8,
        ),
        timeseries(
            "Alert deliveries/s by outcome",
            [target(f"sum by (outcome) (rate(kpimon_alerts_total{{{inst}}}[{ri}]))", "{{outcome}}")],
            unit="ops", w=8,
        ),
        timeseries(
            "Slack delivery errors and retries",
            [target(f'sum by (outcome) (increase(kpimon_alerts_total{{{inst}, outcome=~"failed|retried"}}[{ri}]))', "{{outcome}}")],
            w=8, description="retried: Slack refused or timed out and the worker will try again; failed: given up (non-retryable)",
        ),
        row("Process"),
        timeseries("Resident memory", [target(f"process_resident_memory_bytes{{{inst}}}", "{{instance}}")], unit="bytes", w=8),
        timeseries("CPU", [target(f"rate(process_cpu_seconds_total{{{inst}}}[{ri}])", "{{instance}}")], unit="percentunit", w=8),
        timeseries(
            "Worker restarts",
            [target(f"changes(process_start_time_seconds{{{inst}}}[1h])", "{{instance}}")], w=8, decimals=0,
            description="Process restarts in the trailing hour",
        ),
    ]
    return dashboard(
        uid="kpimon-pipeline-health",
        title="kpimon / Pipeline health",
        description="Is kpimon keeping up? Throughput, lag, bad input, snapshots, alert delivery and the worker processes.",
        panels=panels, variables=variables, refresh="10s", time_from="now-1h",
    )


DASHBOARDS = {"campaign-kpis.json": campaign_kpis, "pipeline-health.json": pipeline_health}


def render() -> dict[str, str]:
    """Every dashboard's file name and JSON text, exactly as committed."""
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed files")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python deploy/tools/dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
