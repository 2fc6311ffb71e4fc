"""PNG charts for Slack: an incident's KPI over its recent windows, and a digest's day.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global state), so a
chart can be rendered in a worker thread (``asyncio.to_thread``) while the event loop runs
on. Every chart is exactly ``WIDTH`` × ``HEIGHT`` pixels: Slack shows it at a known size.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import DateFormatter
from matplotlib.figure import Figure

from kpi_core.digest import Report
from kpi_core.incidents import AlertEvent, Finding

WIDTH, HEIGHT, DPI = 800, 400, 100
_RED, _BLUE, _GREEN, _GREY = "#d62728", "#1f77b4", "#2ca02c", "#7f7f7f"


def _plain(text: str) -> str:
    """Text drawn as written: matplotlib reads ``$...$`` as math (a campaign named ``Win $100 or $200``)."""
    return text.replace("$", r"\$")


def breaching(f: Finding, value: float | None) -> bool:
    """Whether a window's value is on the wrong side of the finding's line."""
    if value is None or f.threshold is None:
        return False
    return value > f.threshold if f.direction == "lower" else value < f.threshold


def chartable(event: AlertEvent) -> Finding | None:
    """The finding an opening's chart shows (the first firing one with history), if any."""
    history = event.extra.get("history") or {}
    return next((f for f in event.findings if f.status == "firing" and any(v is not None for _, v in history.get(f.kpi, []))), None)


def incident_chart(event: AlertEvent) -> bytes | None:
    """The KPI of an incident's opening over its recent windows: target, baseline and breaching windows marked.

    None when the event carries no history to draw (a stale feed, a worker just restarted).
    """
    f = chartable(event)
    if f is None:
        return None
    points = [(start, value) for start, value in event.extra["history"][f.kpi]]
    fig = _figure()
    ax = fig.add_subplot()
    xs = [_time(start) for start, _ in points]
    ys = [float("nan") if v is None else v for _, v in points]
    ax.plot(xs, ys, color=_BLUE, marker="o", markersize=3, linewidth=1.5, label=_plain(f.kpi))
    bad = [(x, y) for x, (_, v), y in zip(xs, points, ys) if breaching(f, v)]
    if bad:
        ax.scatter([x for x, _ in bad], [y for _, y in bad], color=_RED, s=36, zorder=3, label="breaching")
    if f.target is not None:
        ax.axhline(f.target, color=_GREEN, linestyle="--", linewidth=1.2, label=f"target {f.target:.4g}")
    if f.baseline is not None:
        ax.axhline(f.baseline, color=_GREY, linestyle=":", linewidth=1.2, label=f"baseline {f.baseline:.4g}")
    if f.threshold is not None and f.threshold not in (f.target, f.baseline):
        ax.axhline(f.threshold, color=_RED, linestyle="-", linewidth=0.8, alpha=0.5, label=f"alert line {f.threshold:.4g}")
    label = ", ".join(f"{d}={event.group[d]}" for d in event.dims) or "all traffic"
    ax.set_title(_plain(f"{f.kpi} · {label} · {event.window} windows (UTC)"), fontsize=11)
    ax.xaxis.set_major_formatter(DateFormatter("%m-%d %H:%M", tz=timezone.utc))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    return _png(fig)


def bar_chart(title: str, bars: list[tuple[str, float | None]], target: float | None = None) -> bytes:
    """One value per label (a digest's KPI per campaign), with the target as a line."""
    fig = _figure()
    ax = fig.add_subplot()
    labels = [_plain(label) for label, _ in bars]
    values = [0.0 if v is None else v for _, v in bars]
    ax.bar(range(len(bars)), values, color=_BLUE)
    ax.set_xticks(range(len(bars)), labels, rotation=30, ha="right", fontsize=8)
    if target is not None:
        ax.axhline(target, color=_GREEN, linestyle="--", linewidth=1.2, label=f"target {target:.4g}")
        ax.legend(loc="best", fontsize=8)
    ax.set_title(_plain(title), fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def digest_chart(report: Report) -> bytes | None:
    """A digest's first KPI per group, against its target; None when no group has a value."""
    if not report.kpis:
        return None
    kpi = report.kpis[0]
    bars = [(", ".join(r.group.values()) or "all", r.kpis.get(kpi)) for r in report.rows][:20]
    if not any(v is not None for _, v in bars):
        return None
    return bar_chart(f"{kpi} on {report.day.isoformat()} ({report.timezone})", bars, report.targets.get(kpi))


def _figure() -> Figure:
    fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)  # no bbox_inches="tight": that would change the size
    return out.getvalue()


def _time(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)
