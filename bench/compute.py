"""kpi_core alone, no Kafka and no Faust: how fast one core decodes, validates, aggregates and combines.

Generates the same simulated mix as the preload (same campaigns, rate and seed), keeps it as
serialized bytes, then times (1) ``kpi_core.events.decode`` alone and (2) decode + the
two-stage ``LocalPipeline`` (the code ``kpimon replay`` runs) with the worker's config, in
batches like the router's. Prints JSON. This separates the cost of the KPI logic itself from
the cost of moving events through Kafka and Faust.
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
from common import log, source_topics, steady_events  # noqa: E402

from kpi_core import config as config_mod  # noqa: E402
from kpi_core.aggregate import PartitionAggregator  # noqa: E402
from kpi_core.events import decode  # noqa: E402
from kpi_core.pipeline import LocalPipeline  # noqa: E402
from kpi_core.plan import Plan  # noqa: E402
from kpimon.simulator import SimConfig  # noqa: E402


def state_writes(plan: Plan, raws: list[tuple[str, str, bytes]], batch: int, partitions: int = 4) -> dict[str, Any]:
    """Stage-1 state writes (changelog records) per event, as the worker makes them and coalesced.

    Emulates the worker's shape: router batches of ``batch`` events (the worker's own
    ``WorkerSettings.batch_size``) split by campaign hash over ``partitions`` stage-1
    aggregators, and the state's ``changes()`` stored after every bundle or after every 8th
    (the worker stores once per step of up to 64 bundles, however many it finds waiting).
    """
    out: dict[str, Any] = {"events": len(raws), "partitions": partitions, "router_batch": batch}
    for every in (1, 8):
        aggs = [PartitionAggregator(plan, idle_ms=plan.config.idle_timeout) for _ in range(partitions)]
        records = total = sketch = 0
        offsets: dict[str, int] = {}
        messages = 0
        for i in range(0, len(raws), batch):
            buckets: list[list[Any]] = [[] for _ in range(partitions)]
            latest: dict[str, int] = {}
            for topic, etype, raw in raws[i : i + batch]:
                ev = decode(raw, etype)
                off = offsets[topic] = offsets.get(topic, -1) + 1
                latest[topic] = max(latest.get(topic, 0), ev.ts)
                buckets[zlib.crc32(ev.data["campaign"].encode()) % partitions].append((topic, off, ev.type, ev.ts, ev.data))
            messages += 1
            for p, agg in enumerate(aggs):
                agg.apply(buckets[p])
                for src, ts in latest.items():
                    agg.observe(src, ts, None)
                agg.advance(None)
                if messages % every == 0:
                    for key, value in agg.changes():
                        records += 1
                        body = orjson.dumps(value) if value is not None else b""
                        total += len(key) + 4 + len(body)
                        if value is not None and "v" in value:
                            sketch += sum(len(x) for x in value["v"] if isinstance(x, str))
        n = max(1, len(raws))
        out[f"every_{every}"] = {
            "records_per_event": round(records / n, 2),
            "bytes_per_event": round(total / n),
            "sketch_share": round(sketch / total, 2) if total else 0.0,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="the worker's kpimon.yaml")
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--campaigns", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--batch", type=int, default=0, help="router batch (default: the worker's WorkerSettings.batch_size)")
    ap.add_argument("--state-events", type=int, default=200_000, help="events for the state-write what-if")
    args = ap.parse_args()

    cfg = config_mod.load(args.config)
    plan = Plan(cfg)
    sim = SimConfig(campaigns=args.campaigns, rate=args.rate, seed=args.seed)
    topic_of = {etype: topic for topic, etype in source_topics("compute").items()}
    start_ms = int(time.time() * 1000) - 3_600_000
    raws: list[tuple[str, str, bytes]] = []
    for etype, obj in steady_events(sim, start_ms):
        raws.append((topic_of[etype], etype, orjson.dumps(obj)))
        if len(raws) >= args.events:
            break
    gc.collect()
    log(f"compute: {len(raws):,} events generated; timing decode, then decode + LocalPipeline")

    t0 = time.perf_counter()
    for _, etype, raw in raws:
        decode(raw, etype)
    decode_s = time.perf_counter() - t0

    pipe = LocalPipeline(plan)
    outputs = 0
    offsets: dict[str, int] = {}
    t0 = time.perf_counter()
    batch = []
    for topic, etype, raw in raws:
        ev = decode(raw, etype)
        off = offsets[topic] = offsets.get(topic, -1) + 1
        batch.append((topic, off, ev.type, ev.ts, ev.data))
        if len(batch) >= (args.batch or 2000):
            outputs += len(pipe.feed(batch))
            batch = []
    outputs += len(pipe.feed(batch))
    pipeline_s = time.perf_counter() - t0
    n = len(raws)
    from streams.settings import WorkerSettings

    writes = state_writes(plan, raws[: args.state_events], args.batch or WorkerSettings().batch_size)
    print(json.dumps({
        "state_writes": writes,
        "events": n,
        "decode_rate": round(n / decode_s),
        "pipeline_rate": round(n / pipeline_s),
        "decode_s": round(decode_s, 2),
        "pipeline_s": round(pipeline_s, 2),
        "outputs": outputs,
        "late": len(pipe.late),
    }))


if __name__ == "__main__":
    main()
