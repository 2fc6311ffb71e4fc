"""``kpimon init SAMPLE``: a starting kpimon.yaml for the events a sample file holds.

The sample's format is recognised (kpimon's contract, Segment, Snowplow or GA4; see
docs/formats.md), its messages are decoded as the worker would, and the config keeps the
built-in catalogue's measures and KPIs that those events can feed. Targets are left as
comments, each with the value the sample itself gives, so a first run pages nobody.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from kpi_core import config as config_mod, formats
from kpi_core.errors import InvalidEvent, KpimonError
from kpi_core.events import EVENT_TYPES, TYPE_FIELDS, OPTIONAL_FIELDS
from kpi_core.pipeline import run_all
from kpi_core.plan import Plan
from kpi_core.results import format_value
from kpimon.producer import read_events

#: Attributes worth a breakdown when the sample has them, and at most this many values.
BREAKDOWN_ATTRIBUTES = ("device", "country")
MAX_BREAKDOWN_VALUES = 20
HOUR_MS = 3_600_000


class InitError(KpimonError):
    """The sample cannot seed a config; the message says why."""


@dataclass
class Sample:
    """What a sample file holds, as the worker would read it."""

    format: str  # the most common tracker format (kpimon when there is none)
    messages: int = 0
    formats: Counter[str] = field(default_factory=Counter)  # messages per recognised format
    contract_types: set[str] = field(default_factory=set)  # event types sent in kpimon's own contract
    events: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    values: dict[str, set[str]] = field(default_factory=dict)  # attribute -> values seen
    first: int | None = None
    last: int | None = None


def read_sample(path: Path) -> Sample:
    """Recognise each message's format and decode it as the worker would.

    A sample may mix formats: a tracker's messages and the ad platforms' events in kpimon's
    contract (the usual set-up). A message that looks like no format counts as invalid.
    """
    rows = list(read_events(path))
    found = Counter(f for f in map(formats.detect, rows) if f is not None)
    if not found:
        raise InitError(f"{path}: no message looks like kpimon's contract, Segment, Snowplow or GA4 (docs/formats.md)")
    trackers = Counter({f: n for f, n in found.items() if f != "kpimon"})
    sample = Sample(trackers.most_common(1)[0][0] if trackers else "kpimon", messages=len(rows), formats=found)
    decoders = {f: formats.decoder(f) for f in found}
    contract = {f for t in EVENT_TYPES for f in (*TYPE_FIELDS[t], *OPTIONAL_FIELDS.get(t, {}))}
    for obj in rows:
        fmt = formats.detect(obj)
        try:
            if fmt is None:
                raise InvalidEvent("unrecognised", "looks like no format")
            events = decoders[fmt].events(obj)
        except InvalidEvent as exc:
            sample.invalid[exc.reason] += 1
            continue
        sample.skipped += not events
        for ev in events:
            if fmt == "kpimon":
                sample.contract_types.add(ev.type)
            sample.events[ev.type] += 1
            sample.first = ev.ts if sample.first is None else min(sample.first, ev.ts)
            sample.last = ev.ts if sample.last is None else max(sample.last, ev.ts)
            for name, value in ev.data.items():
                if isinstance(value, str) and name not in contract:
                    sample.values.setdefault(name, set()).add(value)
    if not sample.events:
        raise InitError(f"{path}: {sample.messages} messages but no event kpimon can count "
                        f"(invalid: {dict(sample.invalid) or 'none'}, skipped: {sample.skipped})")
    return sample


def _fed(catalogue: dict[str, Any], types: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The catalogue's measures the event types can feed, and the KPIs over only those."""
    fed_types = types | ({"session"} if "pageview" in types else set())
    measures = {n: m for n, m in catalogue["measures"].items() if m.get("event") in fed_types}
    for name, m in catalogue["measures"].items():
        if "add" in m and any(r in measures for r in m["add"]):
            measures[name] = {"add": [r for r in m["add"] if r in measures]}
    kpis = {}
    for name, k in catalogue["kpis"].items():
        refs = [*(k.get("ratio") or []), *(k.get("difference") or []), k.get("over"), k.get("change"), k.get("measure")]
        if all(r in measures for r in refs if r):
            kpis[name] = {key: v for key, v in k.items() if key != "drivers"}
    for name, k in catalogue["kpis"].items():  # a KPI tree only where every factor is kept
        if name in kpis and k.get("drivers") and all(d.lstrip("/") in kpis for d in k["drivers"]):
            kpis[name]["drivers"] = k["drivers"]
    return measures, kpis


def build(sample: Sample, *, sample_path: str, topic: str) -> str:
    """The config text: YAML with comments, which ``config.from_dict`` accepts."""
    catalogue = yaml.safe_load(Path(config_mod.__file__).with_name("default.yaml").read_text())
    measures, kpis = _fed(catalogue, set(sample.events))
    if not kpis:
        raise InitError(f"the sample's events ({', '.join(sample.events)}) feed no KPI of the catalogue")
    span = (sample.last or 0) - (sample.first or 0)
    window = "1h" if span >= HOUR_MS else "1m"
    breakdowns = [["campaign"], ["channel"]]
    breakdowns += [[a] for a in BREAKDOWN_ATTRIBUTES if 1 < len(sample.values.get(a, ())) <= MAX_BREAKDOWN_VALUES]
    breakdowns.append([])
    sources: dict[str, str] = {t: s for t, s in config_mod.Topics().types().items() if s in sample.contract_types}
    for fmt in sorted(f for f in sample.formats if f != "kpimon"):
        sources[topic if fmt == sample.format else f"{fmt}-events"] = fmt
    raw = {"windows": [{"size": window}], "breakdowns": breakdowns, "topics": {"sources": sources},
           "measures": measures, "kpis": kpis}
    config_mod.from_dict(raw)  # never write a config that check-config would refuse
    values = _sample_values(sample_path, raw)

    def block(name: str, items: dict[str, Any]) -> list[str]:
        return [f"{name}:"] + [f"  {k}: {yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()}" for k, v in items.items()]

    first, last = (datetime.fromtimestamp(t / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M") for t in (sample.first, sample.last))
    counts = ", ".join(f"{n} {t}" for t, n in sample.events.most_common())
    lines = [
        f"# Written by `kpimon init {sample_path}`: {sample.messages} messages "
        f"({', '.join(f'{n} {f}' for f, n in sample.formats.most_common())}), {first} to {last} UTC",
        f"# ({counts}; {sample.skipped} skipped, {sum(sample.invalid.values())} invalid).",
        "# Check it with `kpimon check-config kpimon.yaml`; try it with",
        f"# `kpimon replay {sample_path} --config kpimon.yaml --format table`. Field reference: docs/formats.md.",
        "windows:",
        f"  - size: {window}",
        "breakdowns:",
        *(f"  - {yaml.safe_dump(b, default_flow_style=True).strip()}" for b in breakdowns),
        "topics:",
        "  sources:",
    ]
    for t, s in sources.items():
        note = "   # your tracker's Kafka topic" if s in sample.formats else ""
        lines.append(f"    {yaml.safe_dump({t: s}, default_flow_style=True, width=10_000).strip()[1:-1]}{note}")
    if sample.format != "kpimon" and not sample.contract_types & {"impression", "click", "spend"}:
        lines += ["    # Ad platforms report impressions, clicks and spend in kpimon's contract, e.g.:",
                  "    # ad-impressions: impression", "    # ad-clicks: click", "    # ad-spend: spend"]
    lines += block("measures", measures) + block("kpis", kpis)
    lines += ["# Targets page people. To set some, uncomment lines like these in place of `targets: {}`;",
              "# each shows the value the sample gives over all of it:",
              "# targets:"]
    for name, k in kpis.items():
        value = values.get(name)
        if value is None or k.get("direction") not in ("higher", "lower") or k.get("unit") == "count":
            continue
        shown = format_value(value, k.get("unit", "ratio"))
        lines.append(f"#   {name}: {{value: {_target(value, k)}, min_denominator: 100}}   # the sample: {shown}")
    lines.append("targets: {}")
    text = "\n".join(lines) + "\n"
    try:
        config_mod.from_dict(yaml.safe_load(text))  # what is written, exactly, must pass check-config
    except config_mod.ConfigError as exc:
        raise InitError(f"the config for this sample would be refused ({exc}); pick another --topic") from None
    return text


def _target(value: float, k: dict[str, Any]) -> str:
    """A first target a fifth worse than the sample's value, on the KPI's bad side."""
    guess = value * (0.8 if k.get("direction") == "higher" else 1.2)
    if k.get("unit") == "percent":
        return f"{min(guess, 1.0) * 100:.3g}%"
    return f"{guess:.3g}"


def _sample_values(path: str, raw: dict[str, Any]) -> dict[str, float]:
    """Each ratio KPI over the whole sample: its measures summed over the global group's windows."""
    from kpimon.replay import routed

    plan = Plan(config_mod.from_dict(raw))
    sums: Counter[str] = Counter()
    phase_of: dict[str, str] = {}  # a measure is summed from one phase's snapshots only
    rows = read_events(Path(path))
    for item in run_all(plan, routed(plan, rows, {})):
        if getattr(item, "dims", None) == () and item.version == 1:
            for m, v in item.measures.items():
                if phase_of.setdefault(m, item.phase) == item.phase:
                    sums[m] += v
    out = {}
    for name, k in raw["kpis"].items():
        if k.get("ratio") and sums.get(k["ratio"][1]):
            out[name] = sums[k["ratio"][0]] / sums[k["ratio"][1]] * k.get("scale", 1.0)
    return out


def write(sample_path: Path, output: Path, *, topic: str | None = None, force: bool = False) -> Sample:
    """Read ``sample_path`` and write the config to ``output`` (refusing to overwrite unless ``force``)."""
    if output.exists() and not force:
        raise InitError(f"{output} exists; pass --force to overwrite it")
    sample = read_sample(sample_path)
    text = build(sample, sample_path=str(sample_path), topic=topic or f"{sample.format}-events")
    output.write_text(text)
    return sample
