"""The daily digest: yesterday's KPIs for one Slack channel's groups, built from snapshots.

``due`` says which local day a digest reports at a given moment; ``build`` folds that day's
snapshots (and the day before's, for the movers) and its alert events into a ``Report``.
A day is the digest's own (``alerting.digests[].timezone``), midnight to midnight, so it
spans 23 or 25 hours across a DST change. Its windows (``window``, default the smallest)
are summed per group, their measures added, and the KPIs computed again from the sums,
which is exact for counts and sums. KPIs over distinct counts (visitors: the same visitor
in two hours is one visitor) and change KPIs are left out. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from kpi_core.config import Digest
from kpi_core.plan import Plan, base_phase

DAY_MS = 86_400_000


@dataclass(slots=True)
class Row:
    """One group's day: its KPIs, and those on the wrong side of their target."""

    group: dict[str, str]
    kpis: dict[str, float | None]
    breaches: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Mover:
    group: dict[str, str]
    kpi: str
    before: float
    after: float

    @property
    def change(self) -> float:
        return (self.after - self.before) / abs(self.before)


@dataclass(slots=True)
class Report:
    """What a digest says; ``alerts.render.render_digest`` turns it into a message."""

    channel: str
    day: date
    timezone: str
    kpis: list[str]
    targets: dict[str, float | None]  # per KPI, the target with no override (the chart's line)
    units: dict[str, str]
    rows: list[Row]
    movers: list[Mover]
    opened: list[dict[str, Any]]  # alert events (JSON) that opened incidents during the day
    resolved: list[dict[str, Any]]

    @property
    def id(self) -> str:
        return digest_id(self.channel, self.day)


def digest_id(channel: str, day: date) -> str:
    """The idempotency key of a digest: one per channel and day."""
    return f"digest|{channel}|{day.isoformat()}"


def due(spec: Digest, now_ms: int) -> date | None:
    """The local day whose digest is due at ``now_ms``: yesterday, once today's ``at`` has passed."""
    tz = ZoneInfo(spec.timezone)
    now = datetime.fromtimestamp(now_ms / 1000, tz)
    at = time.fromisoformat(spec.at)
    return now.date() - timedelta(days=1) if now.time() >= at else None


def day_range(day: date, zone: str) -> tuple[int, int]:
    """A local day as epoch ms, start inclusive, end exclusive (DST-safe)."""
    tz = ZoneInfo(zone)
    start = datetime.combine(day, time(), tz)
    end = datetime.combine(day + timedelta(days=1), time(), tz)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def posting_time(spec: Digest, day: date) -> int:
    """When the digest of ``day`` is due: ``at`` local time on the next day, epoch ms."""
    at = datetime.combine(day + timedelta(days=1), time.fromisoformat(spec.at), ZoneInfo(spec.timezone))
    return int(at.timestamp() * 1000)


def build(plan: Plan, spec: Digest, day: date, snapshots: Iterable[dict[str, Any]], alerts: Iterable[dict[str, Any]], *,
          fallback: str) -> Report:
    """The digest of ``day`` from snapshot and alert-event records (as JSON).

    ``fallback`` is the channel of alerts no route sends elsewhere (``alerting.default_channel``
    or ``SLACK_CHANNEL``); the digest's own channel defaults to it too.
    """
    channel = spec.channel or fallback
    cfg = plan.config
    window = spec.window or min(cfg.windows, key=lambda w: w.size).name
    dims = list(spec.breakdown)
    kpis = [k for k in (spec.kpis or list(cfg.targets)) if k in cfg.kpis and cfg.summable(k)]
    start, end = day_range(day, spec.timezone)
    before = day_range(day - timedelta(days=1), spec.timezone)[0]
    # The latest version of each window's snapshot, per group, phase and day.
    latest: dict[tuple[str, bool], dict[str, Any]] = {}
    for s in snapshots:
        if s.get("window") != window or s.get("breakdown") != (",".join(dims) or "total"):
            continue
        t = _ms(s["start"])
        if not before <= t < end or _ms(s["end"]) > end:
            continue
        k = (s["key"], t >= start)
        if k not in latest or s["version"] > latest[k]["version"]:
            latest[k] = s
    sums: dict[tuple[bool, tuple[str, ...], str], dict[str, float]] = {}
    groups: dict[tuple[str, ...], dict[str, str]] = {}
    for (_, today), s in latest.items():
        gkey = tuple(s["group"].get(d, "") for d in dims)
        groups[gkey] = s["group"]
        acc = sums.setdefault((today, gkey, base_phase(s["phase"])), {})
        for m, v in s["measures"].items():
            acc[m] = acc.get(m, 0.0) + v
    values: dict[tuple[bool, tuple[str, ...]], dict[str, float | None]] = {}
    by_name = {k.name: k for k in plan.kpis}
    for (today, gkey, phase), measures in sums.items():
        out = values.setdefault((today, gkey), {})
        for name in kpis:
            k = by_name[name]
            if base_phase(k.phase) == phase and all(m in measures for m in k.kpi.refs()):
                out[name] = k.value(measures, None)
    rows, movers = [], []
    seen = {g for today, g in values if today}
    for gkey in sorted(groups):
        group = groups[gkey]
        if gkey not in seen or (cfg.alerting.route(group, kpis)[0] or fallback) != channel:
            continue
        now = values[(True, gkey)]
        row = Row(group, {k: now.get(k) for k in kpis})
        row.breaches = [k for k in kpis if _breach(plan, k, group, now.get(k))]
        rows.append(row)
        then = values.get((False, gkey), {})
        movers += [Mover(group, k, then[k], now[k]) for k in kpis  # type: ignore[arg-type]
                   if then.get(k) not in (None, 0) and now.get(k) is not None and now[k] != then[k]]
    movers.sort(key=lambda m: (-abs(m.change), m.kpi, sorted(m.group.items())))
    opened, resolved = [], []
    for a in alerts:
        if not start <= a.get("start", -1) < end or (a.get("channel") or fallback) != channel:
            continue
        if a["kind"] == "opened":
            opened.append(a)
        elif a["kind"] in ("resolved", "withdrawn"):
            resolved.append(a)
    targets = {k: cfg.targets[k].value if k in cfg.targets else None for k in kpis}
    units = {k: cfg.kpis[k].unit for k in kpis}
    return Report(channel, day, spec.timezone, kpis, targets, units, rows, movers[: spec.top], _once(opened), _once(resolved))


def _breach(plan: Plan, kpi: str, group: dict[str, str], value: float | None) -> bool:
    target = plan.config.targets.get(kpi)
    line = target.rule_for(group).value if target else None
    if value is None or line is None:
        return False
    return value > line if plan.config.kpis[kpi].direction == "lower" else value < line


def _once(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One per alert event id (the outbox may hold a repeat after a crash)."""
    seen: dict[str, dict[str, Any]] = {}
    for a in events:
        seen.setdefault(a.get("id") or f"{a['thread']}#{a['seq']}", a)
    return list(seen.values())


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
