"""Stage 1 alone, in-process: ``PartitionAggregator`` apply / advance / changes over a simulated mix.

Splits the events by campaign over 4 partitions as the router does, and applies them in steps
of ``--step`` events (the worker applies a step's bundles together). Prints events/s of
``apply`` alone and of the whole step. Run it at two commits to compare stage-1 code:

    .venv/bin/python bench/stage1.py --config bench/out/tmp/<run>/compute.yaml --step 40000
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import source_topics, steady_events  # noqa: E402

from kpi_core import config as config_mod  # noqa: E402
from kpi_core.aggregate import PartitionAggregator  # noqa: E402
from kpi_core.events import decode  # noqa: E402
from kpi_core.plan import Plan  # noqa: E402
from kpimon.simulator import SimConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--campaigns", type=int, default=1000)
    ap.add_argument("--step", type=int, default=40_000)
    ap.add_argument("--partitions", type=int, default=4)
    a = ap.parse_args()
    plan = Plan(config_mod.load(a.config))
    topic_of = {etype: topic for topic, etype in source_topics("stage1").items()}
    events: list[tuple[str, int, str, int, dict[str, Any]]] = []
    offsets: dict[str, int] = {}
    for etype, obj in steady_events(SimConfig(campaigns=a.campaigns, rate=2.0, seed=11), 1_717_200_000_000):
        ev = decode(orjson.dumps(obj), etype)
        src = topic_of[etype] + ":0"
        off = offsets[src] = offsets.get(src, -1) + 1
        events.append((src, off, ev.type, ev.ts, ev.data))
        if len(events) >= a.events:
            break
    aggs = [PartitionAggregator(plan, idle_ms=10_000) for _ in range(a.partitions)]
    gc.collect()
    apply_s = rest_s = 0.0
    for i in range(0, len(events), a.step):
        buckets: list[list[Any]] = [[] for _ in aggs]
        latest: dict[str, int] = {}
        for ev in events[i : i + a.step]:
            buckets[zlib.crc32(ev[4]["campaign"].encode()) % len(aggs)].append(ev)
            latest[ev[0]] = max(latest.get(ev[0], 0), ev[3])
        for agg, bucket in zip(aggs, buckets):
            t0 = time.perf_counter()
            agg.apply(bucket)
            t1 = time.perf_counter()
            for src, ts in latest.items():
                agg.observe(src, ts, None)
            agg.advance(None)
            agg.changes()
            rest_s += time.perf_counter() - t1
            apply_s += t1 - t0
    n = len(events)
    print(json.dumps({"events": n, "step": a.step, "apply_rate": round(n / apply_s), "step_rate": round(n / (apply_s + rest_s))}))


if __name__ == "__main__":
    main()
