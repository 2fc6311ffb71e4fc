"""Where stage-1/stage-2 state plateaus with many campaigns: kpi_core in-process over ~45 minutes of event time.

A real-time run of the worker lasts minutes, but a closed 1-minute window's cells stay in
stage 1 until ``session_timeout`` (30 min) after its end (the sessions phase needs them), and
sessions live as long. This feeds the same simulated traffic, 45 minutes of event time of it,
through ``LocalPipeline`` (both stages and alerts, as ``kpimon replay``) as fast as it goes, and
records once per simulated minute:

- the process's RSS (everything kpi_core holds, plus the interpreter, about 40 MB);
- the size of the latest serialized value of every state key, as ``changes()`` would write
  them: what the worker's Faust memory-store tables hold *in addition* (they keep the last
  value of every key in a dict);
- open windows, cells and sessions.

Prints JSON. The worker's own RSS is roughly its idle RSS + these two, plus /metrics series.
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
from common import calibrate, log  # noqa: E402

from kpi_core import config as config_mod  # noqa: E402
from kpi_core.events import decode  # noqa: E402
from kpi_core.pipeline import LocalPipeline  # noqa: E402
from kpi_core.plan import Plan  # noqa: E402
from kpimon.simulator import SimConfig, generate  # noqa: E402


def rss_mb() -> float:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(m.group(1)) / 1024 if m else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--campaigns", type=int, default=10_000)
    ap.add_argument("--events-per-s", type=float, default=1000)
    ap.add_argument("--minutes", type=int, default=45)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=17)
    args = ap.parse_args()

    plan = Plan(config_mod.load(args.config))
    rate, _ = calibrate(args.campaigns, args.events_per_s, (0.02, 0.06), args.seed)
    sim = SimConfig(campaigns=args.campaigns, rate=rate, ctr_range=(0.02, 0.06), seed=args.seed)
    pipe = LocalPipeline(plan)
    stage1 = pipe.stage1
    stored: dict[str, int] = {}  # state key -> bytes of its latest serialized value
    start = (int(time.time() * 1000) // 60_000 - args.minutes - 2) * 60_000
    gc.collect()
    base = rss_mb()
    log(f"statemem: {args.campaigns:,} campaigns, ~{args.events_per_s:,.0f} events/s of event time, "
        f"{args.minutes} minutes of it through LocalPipeline (baseline RSS {base:.0f} MB)")
    rows: list[dict[str, Any]] = []
    batch: list[tuple[str, int, str, int, dict[str, Any]]] = []
    offsets: dict[str, int] = {}
    next_minute = start + 60_000
    n = 0
    t0 = time.monotonic()

    def feed() -> None:
        pipe.feed(batch)
        for store in (stage1, pipe.stage2, pipe.alerts):
            for key, value in store.changes():
                if value is None:
                    stored.pop(key, None)
                else:
                    stored[key] = len(key) + len(orjson.dumps(value))
        batch.clear()

    for etype, obj in generate(sim, start_ms=start, duration_s=args.minutes * 60):
        ev = decode(orjson.dumps(obj), etype)
        off = offsets[etype] = offsets.get(etype, -1) + 1
        batch.append((etype, off, ev.type, ev.ts, ev.data))
        n += 1
        if len(batch) >= args.batch:
            feed()
        if ev.ts >= next_minute:
            feed()
            gc.collect()
            minute = (next_minute - start) // 60_000
            cells = sum(len(w) for w in stage1.cells.values())
            sessions = sum(len(g.sessions) for g in stage1.sessions.values())
            rows.append({
                "minute": minute, "events": n, "rss_mb": round(rss_mb()),
                "stored_mb": round(sum(stored.values()) / 1e6, 1), "stored_keys": len(stored),
                "windows": len(stage1.cells), "cells": cells, "sessions": sessions,
            })
            if minute % 5 == 0:
                log(f"statemem: minute {minute}: RSS {rows[-1]['rss_mb']} MB, stored {rows[-1]['stored_mb']} MB, "
                    f"{cells:,} cells in {len(stage1.cells)} windows, {sessions:,} sessions")
            next_minute += 60_000
    feed()
    peak = max(rows, key=lambda r: r["rss_mb"]) if rows else {}
    print(json.dumps({
        "campaigns": args.campaigns,
        "events_per_s": args.events_per_s,
        "minutes": args.minutes,
        "events": n,
        "seconds": round(time.monotonic() - t0, 1),
        "baseline_rss_mb": round(base),
        "peak": peak,
        "rows": rows,
    }))


if __name__ == "__main__":
    main()
