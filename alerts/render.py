"""Alert messages for people: a plain-text fallback and Slack Block Kit blocks."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from kpi_core.digest import Report
from kpi_core.feedback import ACK, FALSE_ALARM, MAX_VALUE, SILENCE, SNOOZE, IncidentFeedback, Mark, Ref
from kpi_core.incidents import AlertEvent, Finding
from kpi_core.results import format_value, iso

# Slack's limits: https://api.slack.com/reference/block-kit/blocks
MAX_BLOCKS = 50
MAX_HEADER_CHARS = 150
MAX_SECTION_CHARS = 3000
MAX_TEXT_CHARS = 40_000  # Slack truncates longer message text


def _group_label(dims: tuple[str, ...], group: dict[str, str]) -> str:
    """A breakdown group for people: ``campaign=spring-sale, channel=social``, or ``all traffic``."""
    return ", ".join(f"{d}={group[d]}" for d in dims) if dims else "all traffic"


def _amount(value: float) -> str:
    """A measure: counts without decimals, sums (such as cost) with two."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, MAX_SECTION_CHARS)}}


def _time_range(url: str, start: int, end: int) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("from", "to")]
    query += [("from", str(start)), ("to", str(end))]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _escape(text: str) -> str:
    """Escape Slack's control characters, so a campaign named ``<!channel>`` pings nobody."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_ICONS = {"critical": "🔴", "warning": "🟠"}
_RESOLVED_ICON = "✅"
_WITHDRAWN_ICON = "↩️"
_RULES = {"target": "target", "drift": "drift", "no_data": "no data", "stale": "feed stale"}


def render_event(
    event: AlertEvent, *, change: str | None = None, grafana_url: str | None = None,
    ref: Ref | None = None, feedback: IncidentFeedback | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """The fallback text and Block Kit blocks of a thread's message, showing its current state.

    ``change`` (a ``render_update`` text) is for destinations that cannot edit a message,
    such as webhooks: it marks the message as an update and says what changed.
    ``grafana_url`` is the dashboard to link when the event carries no link of its own.
    ``ref`` (the incident, when Slack's buttons are on) adds the buttons while it fires, and
    ``feedback`` what people did about it (acknowledged by whom and when, snoozed...).
    """
    if not event.findings:
        raise ValueError("an alert event needs at least one finding")
    title = _event_title(event)
    if change is not None:
        title = f"{'REMINDER' if event.kind == 'reminder' else 'UPDATE'} · {title}"
    findings = [_finding_facts(f, event) for f in event.findings]

    top = [event.mention] if event.mention else []  # a mention is meant to ping: not escaped
    if change is not None:
        top.append(change)
    lines = [" · ".join([f"{icon} {name} {verdict}", *details]) for icon, name, verdict, details in findings]
    text = "\n".join([*top, _escape(title), *lines])

    extra = feedback_blocks(ref, feedback, firing=event.status == "firing") if ref or feedback else []
    status = feedback_line(feedback)
    if status:
        text += "\n" + status
    # The header and the context block take two, the mention and the change one each.
    shown = findings[: MAX_BLOCKS - 2 - len(top) - len(extra)]
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": _clip(title, MAX_HEADER_CHARS)}}]
    blocks += [_section(line) for line in top]
    blocks += [_section("\n".join([f"{icon} *{name}* {verdict}", *details])) for icon, name, verdict, details in shown]
    notes = []
    if len(findings) > len(shown):
        notes.append(f"…and {len(findings) - len(shown)} more KPIs not shown")
    link = event.grafana_url or (grafana_url and _time_range(grafana_url, event.start, event.end))
    if link:
        notes.append(f"<{_escape(link)}|Open in Grafana>")
    if notes:
        context = {"type": "mrkdwn", "text": _clip(" · ".join(notes), MAX_SECTION_CHARS)}
        blocks.append({"type": "context", "elements": [context]})
    return _clip(text, MAX_TEXT_CHARS), blocks + extra


FEEDBACK_BLOCK = "kpimon_feedback"  # block_id prefix of what feedback_blocks adds: replaced on each edit
_BUTTONS = ((ACK, "Acknowledge", None), (SNOOZE, "Snooze until recovered", None), (SILENCE, "Silence 24 h", None),
            (FALSE_ALARM, "False alarm", "danger"))
_DONE = {ACK: "✔️ Acknowledged by", SNOOZE: "💤 Snoozed until recovered by", SILENCE: "🔕 Silenced for 24 h by",
         FALSE_ALARM: "🚫 Closed as a false alarm by"}


def feedback_line(feedback: IncidentFeedback | None) -> str:
    """What people did about the incident, e.g. ``✔️ Acknowledged by <@U123> 2026-12-05 09:14 UTC``."""
    if feedback is None:
        return ""
    return " · ".join(f"{_DONE[a]} <@{_escape(m.user)}> {_when(m)}" for a, _, _ in _BUTTONS if (m := feedback.marks.get(a)))


def feedback_blocks(ref: Ref | None, feedback: IncidentFeedback | None, *, firing: bool) -> list[dict[str, Any]]:
    """The feedback status line and, while the incident fires and is not closed, the buttons still to press."""
    blocks: list[dict[str, Any]] = []
    line = feedback_line(feedback)
    if line:
        blocks.append({"type": "context", "block_id": f"{FEEDBACK_BLOCK}_status",
                       "elements": [{"type": "mrkdwn", "text": _clip(line, MAX_SECTION_CHARS)}]})
    marks = feedback.marks if feedback else {}
    value = ref.to_value() if ref is not None else ""
    if ref is not None and firing and FALSE_ALARM not in marks and len(value) <= MAX_VALUE:
        buttons = []
        for action, label, style in _BUTTONS:
            if action in marks or (action == SILENCE and not ref.group):  # a total's silence would mute its KPI everywhere
                continue
            button: dict[str, Any] = {"type": "button", "action_id": f"kpimon_{action}", "value": value,
                                      "text": {"type": "plain_text", "text": label}}
            if style:
                button["style"] = style
            buttons.append(button)
        blocks.append({"type": "actions", "block_id": FEEDBACK_BLOCK, "elements": buttons})
    return blocks


def refresh_feedback(text: str, blocks: list[dict[str, Any]], feedback: IncidentFeedback) -> tuple[str, list[dict[str, Any]]]:
    """A message as Slack sent it with a click, showing ``feedback`` instead of what it showed.

    The buttons stay only if the message had them (the incident still fires) and it is not
    now closed as a false alarm; those already pressed go.
    """
    firing = any(b.get("block_id") == FEEDBACK_BLOCK for b in blocks)
    kept = [b for b in blocks if not str(b.get("block_id", "")).startswith(FEEDBACK_BLOCK)]
    lines = [line for line in text.split("\n") if not line.startswith(tuple(_DONE.values()))]
    status = feedback_line(feedback)
    return "\n".join([*lines, *([status] if status else [])]), kept + feedback_blocks(feedback.ref if firing else None, feedback, firing=firing)


def _when(mark: Mark) -> str:
    """A time Slack shows in each reader's own zone, with a UTC fallback."""
    fallback = iso(mark.at)[:16].replace("T", " ") + " UTC"
    return f"<!date^{mark.at // 1000}^{{date_short_pretty}} {{time}}|{fallback}>"


def render_update(
    event: AlertEvent, *, previous_severity: str | None = None, previously_firing: Collection[str] | None = None
) -> str:
    """The short thread reply for one change, e.g. ``Escalated to critical`` or ``Resolved: ctr back to 3.10% (target 2.00%)``.

    ``previous_severity`` and ``previously_firing`` (KPI names) are what the thread showed
    before; without them an update can only say what is resolved and what is still firing.
    """
    firing = [f for f in event.findings if f.status == "firing"]
    resolved = [f for f in event.findings if f.status == "resolved"]
    if event.kind == "opened":
        return "Opened: " + "; ".join(_short(f, event) for f in firing or event.findings)
    if event.kind == "resolved":
        return "Resolved: " + "; ".join(_short(f, event) for f in resolved or event.findings)
    withdrawn = [f for f in event.findings if f.status == "withdrawn"]
    if event.kind == "withdrawn":
        return _clip(f"Withdrawn: {_revision(event)}. " + "; ".join(_short(f, event) for f in withdrawn or event.findings)
                     + ". This alert should not have opened.", MAX_TEXT_CHARS)
    if event.kind == "reminder":
        return "Still firing: " + "; ".join(_short(f, event) for f in firing or event.findings)
    lines = []
    if previous_severity and previous_severity != event.severity:
        which = "; ".join(_short(f, event) for f in firing if f.severity == event.severity)
        change = "Escalated to critical" if event.severity == "critical" else "Eased to warning"
        lines.append(f"{change}: {which}" if which else change)
    if previously_firing is not None:
        new = [f for f in firing if f.kpi not in previously_firing]
        if new:
            lines.append("New: " + "; ".join(_short(f, event) for f in new))
    if resolved:
        lines.append("Resolved: " + "; ".join(_short(f, event) for f in resolved))
    if withdrawn:
        lines.append(f"Withdrawn ({_revision(event)}): " + "; ".join(_short(f, event) for f in withdrawn))
    if not lines or (previously_firing is None and firing):
        lines.append("Still firing: " + "; ".join(_short(f, event) for f in firing))
    return _clip("\n".join(lines), MAX_TEXT_CHARS)


def _revision(event: AlertEvent) -> str:
    """``the window's data was revised (version 3: spend 120.00 → 60.00)``."""
    changed = event.extra.get("revised") or {}
    what = ", ".join(f"{m} {_amount(a)} → {_amount(b)}" for m, (a, b) in sorted(changed.items()))
    version = event.extra.get("revision")
    about = ": ".join(x for x in (f"version {version}" if version else "", what) if x)
    return "the window's data was revised" + (f" ({about})" if about else "")


def _event_title(event: AlertEvent) -> str:
    """``🔴 CRITICAL · campaign=spring-sale · 2 KPIs breaching``, or ``✅ RESOLVED · …``."""
    group = _group_label(event.dims, event.group)
    if event.kind == "withdrawn":
        return f"{_WITHDRAWN_ICON} WITHDRAWN · {group} · revised data: {_count(len(event.findings))} not breaching after all"
    if event.kind == "resolved":
        if all(f.rule == "stale" for f in event.findings):
            return f"{_RESOLVED_ICON} RESOLVED · {group} · feed caught up"
        n = len(event.findings)
        return f"{_RESOLVED_ICON} RESOLVED · {group} · {_count(n)} back to normal"
    firing = [f for f in event.findings if f.status == "firing"]
    if firing and all(f.rule == "no_data" for f in firing):
        what = "no data"
    elif firing and all(f.rule == "stale" for f in firing):
        what = "feed stale: its KPIs are held provisional"
    else:
        what = f"{_count(len(firing))} breaching"
    return f"{_ICONS.get(event.severity, '🔴')} {event.severity.upper()} · {group} · {what}"


def _count(n: int) -> str:
    return "1 KPI" if n == 1 else f"{n} KPIs"


def _finding_facts(f: Finding, event: AlertEvent) -> tuple[str, str, str, list[str]]:
    """Icon, KPI name, verdict and detail lines of one finding, escaped for mrkdwn."""
    icon = {"resolved": _RESOLVED_ICON, "withdrawn": _WITHDRAWN_ICON}.get(f.status) or _ICONS.get(f.severity, "🔴")
    details = []
    # A resolved finding keeps the volume of the window that fired it: not shown, as it would mislead.
    if f.rule not in ("no_data", "stale") and f.status == "firing":
        volume = [f"{_amount(f.numerator)} {f.numerator_name} / {_amount(f.denominator)} {f.denominator_name}"]
        if f.interval is not None:
            volume.append(f"CI {format_value(f.interval[0], f.unit)}–{format_value(f.interval[1], f.unit)}")
        details.append(" · ".join(volume))
    c = f.contributor
    if c is not None and f.status == "firing":
        about = [f"{c.share * 100:.0f}% of {f.denominator_name}"]
        if c.kpi_value is not None:
            about.append(f"{f.kpi} {format_value(c.kpi_value, f.unit)}")
        details.append(f"driven by {c.dimension}={c.value} ({', '.join(about)})")
    if f.status == "firing":
        details += _weighed(f)
    if f.rule == "stale":
        details.append(f"rule: {_RULES['stale']} · reported up to {iso(event.start)}, fast streams at {iso(event.end)}")
        return icon, _escape(_name(f)), _escape(_verdict(f)), [_escape(d) for d in details]
    window = f"{event.window} {iso(event.start)}–{iso(event.end)}"
    details.append(f"rule: {_RULES.get(f.rule, f.rule)} · window {window}")
    return icon, _escape(_name(f)), _escape(_verdict(f)), [_escape(d) for d in details]


def _weighed(f: Finding) -> list[str]:
    """What judging the window as a whole added: the KPI tree's drivers, the wider breaches this
    incident stands for, and the false-discovery q-value."""
    out = []
    if f.drivers and f.change is not None:
        since = f" since {iso(f.reference)[11:16]}" if f.reference is not None else ""
        parts = []
        for i, d in enumerate(f.drivers):
            most = i == 0 and f.change and d["part"] / f.change >= 0.5
            parts.append(f"{d['kpi']} {d['change']:+.1%}" + (" (most of it)" if most else ""))
        out.append(f"{f.kpi} {f.change:+.1%}{since}: {', '.join(parts)}")
    for e in f.explains or ():
        where = _group_label(tuple(e["group"]), e["group"])
        if e["wider"]:
            out.append(f"explains {e['share']:.0%} of the change of {where} (no incident of its own)")
        else:
            out.append(f"includes {where}, {e['share']:.0%} of this change")
    if f.q_value is not None:
        out.append(f"q = {f.q_value:.2g}: the false-discovery rate at which this breach is still a discovery")
    return out


def _name(f: Finding) -> str:
    return "no data:" if f.rule == "no_data" else f.kpi


def _verdict(f: Finding) -> str:
    """``0.42% is below target 2.00% (baseline 4.10%)``, ``back to 3.10% (target 2.00%)``, or the no-data case."""
    if f.rule == "stale":
        behind = f"{_hours(f.value or 0.0)} behind the fast streams (delay {_hours(f.threshold or 0.0)})"
        return f"caught up: {behind}" if f.status == "resolved" else behind
    if f.rule == "no_data":
        if f.status == "resolved":
            return f"{f.numerator_name} arriving again"
        if f.denominator_name == "windows":
            return f"no {f.numerator_name} in the last {_amount(f.denominator)} windows"
        return f"no {f.numerator_name}"
    name, line = _line(f)
    refs = []
    if f.baseline is not None:
        refs.append(f"baseline {format_value(f.baseline, f.unit)}")
    if f.target is not None and name != "target":
        refs.append(f"target {format_value(f.target, f.unit)}")
    if f.status == "withdrawn":
        now = "has no value" if f.value is None else f"revised to {format_value(f.value, f.unit)}"
        was = f"{format_value(f.revised_from, f.unit)} {_side(f)} {name} {format_value(line, f.unit)}" if f.revised_from is not None and line is not None else None
        return f"withdrawn: {now}" + (f" (alerted on {was})" if was else "")
    if f.value is None:
        verdict = "has no value"
    elif f.status == "resolved":
        if line is not None:
            refs.insert(0, f"{name} {format_value(line, f.unit)}")
        return f"back to {format_value(f.value, f.unit)}" + (f" ({', '.join(refs)})" if refs else "")
    elif line is None:
        verdict = format_value(f.value, f.unit)
    elif f.expected is not None:
        # Seasonal drift: the expected range for this hour and day, and how unusual the value is.
        lo, hi = f.expected
        refs = [x for x in refs if not x.startswith("baseline")]
        verdict = (f"{format_value(f.value, f.unit)}, expected {format_value(lo, f.unit)}–{format_value(hi, f.unit)}"
                   + (f" at {f.when}" if f.when else "") + f" ({_unusual(f)})")
    else:
        verdict = f"{format_value(f.value, f.unit)} is {_side(f)} {name} {format_value(line, f.unit)}"
    return verdict + (f" ({', '.join(refs)})" if refs else "")


def _unusual(f: Finding) -> str:
    """``4.1 sd above, p = 2e-05``: how far out, in the baseline's spreads, and how likely by chance."""
    side = "above" if (f.z or 0) > 0 else "below"
    p = f.p_value if f.p_value is not None else 1.0
    return f"{abs(f.z or 0):.1f} sd {side} expected, p = {p:.1g}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _short(f: Finding, event: AlertEvent) -> str:
    """One finding in a thread reply: ``ctr 0.42% below target 2.00%``, ``ctr back to 3.10% (target 2.00%)``."""
    if f.rule == "no_data":
        return _escape(_verdict(f))
    if f.rule == "stale":
        return _escape(f"{f.kpi} {_verdict(f)}")
    name, line = _line(f)
    if f.status in ("resolved", "withdrawn") or f.value is None or line is None or f.expected is not None:
        return _escape(f"{f.kpi} {_verdict(f)}")
    return _escape(f"{f.kpi} {format_value(f.value, f.unit)} {_side(f)} {name} {format_value(line, f.unit)}")


def _line(f: Finding) -> tuple[str, float | None]:
    """The line a finding is judged against, and what to call it."""
    if f.rule == "target":
        return "target", f.threshold if f.threshold is not None else f.target
    if f.threshold is not None:
        return "drift threshold", f.threshold
    return "target", f.target


def _side(f: Finding) -> str:
    return "below" if f.direction == "higher" else "above"


def render_digest(report: Report, top: int = 10) -> tuple[str, list[dict[str, Any]]]:
    """A daily digest: the groups' KPIs (breaches first), the top movers, the incidents of the day."""
    title = f"KPI digest · {report.day.isoformat()} ({report.timezone})"
    rows = sorted(report.rows, key=lambda r: (-len(r.breaches), sorted(r.group.items())))
    lines = []
    for row in rows[:top]:
        label = _escape(", ".join(f"{d}={v}" for d, v in row.group.items()) or "all traffic")
        facts = []
        for k in report.kpis:
            v = row.kpis.get(k)
            if v is None:
                continue
            target = report.targets.get(k)
            mark = f" ⚠️ (target {format_value(target, report.units[k])})" if k in row.breaches and target is not None else (
                " ⚠️" if k in row.breaches else "")
            facts.append(f"{k} {format_value(v, report.units[k])}{mark}")
        lines.append(f"*{label}* · " + " · ".join(facts or ["no data"]))
    if len(rows) > top:
        lines.append(f"…and {len(rows) - top} more")
    movers = [f"{m.kpi} {_escape(', '.join(f'{d}={v}' for d, v in m.group.items()))}: {format_value(m.before, report.units[m.kpi])} → "
              f"{format_value(m.after, report.units[m.kpi])} ({m.change:+.0%})" for m in report.movers]
    incidents = [f"{_ICONS.get(a.get('severity', ''), '🟠')} {', '.join(sorted({f['kpi'] for f in a['findings']}))} · "
                 f"{_escape(_group_label(tuple(a['dims']), a['group']))} from {iso(a['start'])[11:16]} UTC" for a in report.opened]
    summary = f"Incidents: {len(report.opened)} opened, {len(report.resolved)} resolved"
    parts = [title, *(lines or ["No data for this channel's groups."]), "Top movers vs the day before:" if movers else "",
             *movers, summary, *incidents]
    text = _clip("\n".join(p for p in parts if p), MAX_TEXT_CHARS)
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": _clip(title, MAX_HEADER_CHARS)}}]
    blocks.append(_section("\n".join(lines) or "No data for this channel's groups."))
    if movers:
        blocks.append(_section("*Top movers vs the day before*\n" + "\n".join(movers)))
    blocks.append(_section(f"*{summary}*" + "".join("\n" + i for i in incidents)))
    return text, blocks
