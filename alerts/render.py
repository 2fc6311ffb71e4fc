"""Alert messages for people: a plain-text fallback and Slack Block Kit blocks."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from kpi_core.results import Breach, format_value, iso

# Slack's limits: https://api.slack.com/reference/block-kit/blocks
MAX_BLOCKS = 50
MAX_HEADER_CHARS = 150
MAX_SECTION_CHARS = 3000
MAX_TEXT_CHARS = 40_000  # Slack truncates longer message text


def render(breaches: list[Breach], *, grafana_url: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The fallback text and Block Kit blocks of one alert about one group's breaches."""
    if not breaches:
        raise ValueError("an alert needs at least one breach")
    title = _title(breaches)
    facts = [_facts(b) for b in breaches]
    # Slack parses message text as mrkdwn too, so the fallback is escaped like the blocks.
    lines = [f"{kpi} {verdict}: {volume} in window {window}" for kpi, verdict, volume, window in facts]
    text = "\n".join([_escape(title), *lines])

    shown = facts[: MAX_BLOCKS - 2]  # the header and the context block take two
    header = {"type": "plain_text", "text": _clip(title, MAX_HEADER_CHARS)}
    blocks: list[dict[str, Any]] = [{"type": "header", "text": header}]
    blocks += [_section(f"*{kpi}* {verdict}\n{volume} in window {window}") for kpi, verdict, volume, window in shown]
    notes = []
    if len(facts) > len(shown):
        notes.append(f"…and {len(facts) - len(shown)} more breaches not shown")
    if grafana_url:
        notes.append(f"<{_escape(_with_time_range(grafana_url, breaches))}|Open in Grafana>")
    if notes:
        context = {"type": "mrkdwn", "text": _clip(" · ".join(notes), MAX_SECTION_CHARS)}
        blocks.append({"type": "context", "elements": [context]})
    return _clip(text, MAX_TEXT_CHARS), blocks


def _group_label(dims: tuple[str, ...], group: dict[str, str]) -> str:
    """A breakdown group for people: ``campaign=spring-sale, channel=social``, or ``all traffic``."""
    return ", ".join(f"{d}={group[d]}" for d in dims) if dims else "all traffic"


def _title(breaches: list[Breach]) -> str:
    # Callers send one group per message; several are still named rather than hidden.
    groups = "; ".join(dict.fromkeys(_group_label(b.dims, b.group) for b in breaches))
    what = "KPI breach" if len(breaches) == 1 else f"{len(breaches)} KPI breaches"
    return f"{what}: {groups}"


def _facts(b: Breach) -> tuple[str, str, str, str]:
    """KPI name, value against target, volume and window of one breach, escaped for mrkdwn."""
    side = "below" if b.direction == "higher" else "above"
    verdict = f"{format_value(b.value, b.unit)} is {side} target {format_value(b.target, b.unit)}"
    volume = f"{_amount(b.numerator)} {b.numerator_name} / {_amount(b.denominator)} {b.denominator_name}"
    window = f"{b.window} {iso(b.start)}–{iso(b.end)}"
    return _escape(b.kpi), verdict, _escape(volume), _escape(window)


def _amount(value: float) -> str:
    """A measure: counts without decimals, sums (such as cost) with two."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, MAX_SECTION_CHARS)}}


def _with_time_range(url: str, breaches: list[Breach]) -> str:
    """The dashboard URL with Grafana's ``from``/``to`` set to the breached windows."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("from", "to")]
    query += [("from", str(min(b.start for b in breaches))), ("to", str(max(b.end for b in breaches)))]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _escape(text: str) -> str:
    """Escape Slack's control characters, so a campaign named ``<!channel>`` pings nobody."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
