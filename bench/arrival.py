"""What late data costs (config.arrival): the state kept while windows wait, and throughput.

1. Memory. With the built-in profiles, hourly windows keep their cells until spend has
   reported past them, for at most ``delay`` (6 h): at N campaigns that is about seven hourly
   windows of every group, plus one restatement entry per spend report. This builds that
   state directly (one of each event type per campaign and hour, ``--hours`` of event time,
   spend reports restated once, nothing reported complete) and measures the aggregator's
   RSS growth and the bytes its changelog would hold.
2. Throughput. Decode + ``LocalPipeline`` over the same simulated mix with the built-in
   config, with and without its ``arrival`` section, and without ``revise_for`` (best of ``--repeat``).
3. Revisions. The state ``revise_for`` keeps in steady state (``revision_state``).

Prints JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, steady_events  # noqa: E402

from kpi_core import config as config_mod  # noqa: E402
from kpi_core.aggregate import PartitionAggregator  # noqa: E402
from kpi_core.combine import Combiner  # noqa: E402
from kpi_core.events import decode  # noqa: E402
from kpi_core.pipeline import LocalPipeline  # noqa: E402
from kpi_core.plan import Plan  # noqa: E402
from kpimon.simulator import SimConfig  # noqa: E402

HOUR = 3_600_000


def rss_mb() -> float:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(m.group(1)) / 1024 if m else 0.0


def _campaign(c: int) -> dict[str, str]:
    return {"campaign": f"camp-{c:05d}", "channel": ("paid_search", "social", "email")[c % 3], "device": ("desktop", "mobile")[c % 2]}


def _fast_events(c: int, h: int, base: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """One campaign's impression, click, lead and order of hour ``h``."""
    return [(etype, {**base, **extra}) for etype, extra in (
        ("impression", {}), ("click", {"cost": 0.5}), ("lead", {"lead_id": f"l{c}-{h}", "stage": "lead"}),
        ("order", {"order_id": f"o{c}-{h}", "revenue": 40.0, "customer_id": f"u{c}", "new_customer": True}))]


def waiting_state(plan: Plan, campaigns: int, hours: int) -> dict[str, Any]:
    agg = PartitionAggregator(plan, idle_ms=plan.config.idle_timeout)
    src = {t: plan.source_of(t) for t in ("impression", "click", "lead", "order", "spend")}
    start = 1_714_564_800_000
    off = 0
    gc.collect()
    before = rss_mb()
    stored = 0
    for h in range(hours):
        batch = []
        for c in range(campaigns):
            base = _campaign(c)
            for etype, data in _fast_events(c, h, base):
                off += 1
                batch.append((src[etype], off, etype, start + h * HOUR + (c % 3600) * 1000, data))
            for version in (1, 2):  # the hour's report, then its restatement
                off += 1
                batch.append((src["spend"], off, "spend", start + h * HOUR, {**base, "amount": 100.0 - version, "report_version": version}))
        agg.apply(batch)
        for s in {e[0] for e in batch}:
            if plan.source_type(s) not in plan.delayed:
                agg.observe(s, start + (h + 1) * HOUR + 20_000, None)  # the fast streams move on
        agg.advance(None)
        stored = sum(len(k) + len(orjson.dumps(v)) for k, v in agg.changes() if v is not None) + stored
    gc.collect()
    cells = {wi: sum(len(g) for (w, _), g in agg.cells.items() if w == wi) for wi in range(len(plan.windows))}
    return {
        "campaigns": campaigns, "hours": hours,
        "rss_mb": round(rss_mb() - before), "changelog_mb_written": round(stored / 1e6),
        "cells_by_window": {plan.windows[wi].name: n for wi, n in cells.items()},
        "windows_open": len(agg.cells), "restated_reports": len(agg.reports),
    }


def revision_state(plan: Plan, campaigns: int, hours: int) -> dict[str, Any]:
    """Stage 1 and stage 2 state in steady state with revisions (``revise_for``): every hour each
    campaign's events, and the spend report of two hours earlier (which settles that hour), for
    ``hours`` of event time; windows older than their revision horizon are dropped as they pass."""
    agg = PartitionAggregator(plan, idle_ms=plan.config.idle_timeout)
    comb = Combiner(plan, sources=1)
    src = {t: plan.source_of(t) for t in ("impression", "click", "lead", "order", "spend")}
    start = 1_714_564_800_000
    off = 0
    gc.collect()
    before = rss_mb()
    for h in range(hours):
        batch = []
        for c in range(campaigns):
            base = _campaign(c)
            for etype, data in _fast_events(c, h, base):
                off += 1
                batch.append((src[etype], off, etype, start + h * HOUR + (c % 3600) * 1000, data))
            if h >= 2:
                off += 1
                batch.append((src["spend"], off, "spend", start + (h - 2) * HOUR, {**base, "amount": 100.0, "report_version": 1}))
        agg.apply(batch)
        for s in {e[0] for e in batch}:
            agg.observe(s, start + (h + 1) * HOUR + 20_000 if plan.source_type(s) not in plan.delayed else start + (h - 1) * HOUR, None)
        comb.receive(0, agg.report_horizons(), agg.advance(None) or [], at=h)
        comb.finalize_windows()
        agg.changes()
        comb.changes()
    gc.collect()
    return {
        "campaigns": campaigns, "hours": hours, "revise_for_h": max(plan.window_revise) / HOUR,
        "rss_mb": round(rss_mb() - before),
        "settled_windows": len(agg.settled), "settled_cells": sum(len(g) for g in agg.settled.values()),
        "restated_reports": len(agg.reports),
        "published_windows": len(comb.revisable), "published_groups": sum(len(w.groups) for w in comb.revisable.values()),
    }


def throughput(config: Any, events: int, repeat: int) -> float:
    plan = Plan(config)
    sim = SimConfig(campaigns=1000, rate=2.0, seed=11)
    raws = []
    for etype, obj in steady_events(sim, int(time.time() * 1000) - 3_600_000):
        raws.append((plan.source_of(etype), etype, orjson.dumps(obj)))
        if len(raws) >= events:
            break
    best = 0.0
    for _ in range(repeat):
        pipe = LocalPipeline(plan)
        gc.collect()
        t0 = time.perf_counter()
        batch, off = [], 0
        for src, etype, raw in raws:
            ev = decode(raw, etype)
            off += 1
            batch.append((src, off, ev.type, ev.ts, ev.data))
            if len(batch) >= 2000:
                pipe.feed(batch)
                batch = []
        pipe.feed(batch)
        best = max(best, len(raws) / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--campaigns", type=int, default=10_000)
    ap.add_argument("--hours", type=int, default=7)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--revision-hours", type=int, default=0, help="hours of event time for the revision state (0: revise_for + 8 h)")
    ap.add_argument("--only", choices=["revisions", "throughput"], help="measure only this")
    ap.add_argument("--revise-for", help="measure the revision state with this spend revise_for instead of the built-in's")
    args = ap.parse_args()
    config = config_mod.load()
    if args.revise_for:
        spend = config.arrival["spend"].model_copy(update={"revise_for": config_mod.parse_duration(args.revise_for)})
        config = config.model_copy(update={"arrival": {**config.arrival, "spend": spend}})
    # The revision state lives in the settle windows (1h); 1-minute windows only cost time here.
    plan = Plan(config.model_copy(update={"windows": [w for w in config.windows if w.name in (config.settle_windows or [w.name])]}))
    hours = args.revision_hours or int(max(plan.window_revise) / HOUR) + 8
    revisions = None
    if args.only != "throughput":
        log(f"arrival: revision state, {args.campaigns:,} campaigns, {hours} h of event time")
        revisions = revision_state(plan, args.campaigns, hours)
    if args.only == "revisions":
        print(json.dumps({"revision_state": revisions}))
        return
    out: dict[str, Any] = {"revision_state": revisions}
    if args.only != "throughput":
        log(f"arrival: waiting state, {args.campaigns:,} campaigns, {args.hours} h of event time")
        out["waiting_state"] = waiting_state(Plan(config), args.campaigns, args.hours)
    log(f"arrival: throughput with and without the arrival profiles, {args.events:,} events")
    without = config.model_copy(update={"arrival": {}, "settle_windows": None})
    no_revisions = config.model_copy(update={"arrival": {k: a.model_copy(update={"revise_for": 0}) for k, a in config.arrival.items()}})
    with_, plain = throughput(config, args.events, args.repeat), throughput(without, args.events, args.repeat)
    unrevised = throughput(no_revisions, args.events, args.repeat)
    out["throughput"] = {"with_arrival_ev_s": round(with_), "without_ev_s": round(plain), "change": round(with_ / plain - 1, 3),
                         "without_revisions_ev_s": round(unrevised), "revisions_change": round(with_ / unrevised - 1, 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
