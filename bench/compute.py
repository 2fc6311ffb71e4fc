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
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, source_topics  # noqa: E402

from kpi_core import config as config_mod  # noqa: E402
from kpi_core.events import decode  # noqa: E402
from kpi_core.pipeline import LocalPipeline  # noqa: E402
from kpi_core.plan import Plan  # noqa: E402
from kpimon.simulator import SimConfig, generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="the worker's kpimon.yaml")
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--campaigns", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--batch", type=int, default=2000)
    args = ap.parse_args()

    cfg = config_mod.load(args.config)
    plan = Plan(cfg)
    sim = SimConfig(campaigns=args.campaigns, rate=args.rate, seed=args.seed)
    topic_of = {etype: topic for topic, etype in source_topics("compute").items()}
    start_ms = int(time.time() * 1000) - 3_600_000
    raws: list[tuple[str, str, bytes]] = []
    for etype, obj in generate(sim, start_ms=start_ms, duration_s=None):
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
        if len(batch) >= args.batch:
            outputs += len(pipe.feed(batch))
            batch = []
    outputs += len(pipe.feed(batch))
    pipeline_s = time.perf_counter() - t0
    n = len(raws)
    print(json.dumps({
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
