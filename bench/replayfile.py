"""Write the replay benchmark's input: simulated events over 2 hours of event time, as JSONL.

1,000 campaigns with page-view sessions, clicks, leads, orders, spend and surveys; the
impression rate and spend interval are chosen so that 2 hours come to about 1,000,000
events. Stops at ``--events``. Prints JSON: events written and the event-time span.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import orjson

from kpimon.simulator import SimConfig, generate

START_MS = 1_717_200_000_000  # 2024-06-01T00:00:00Z: historical data, as a backfill would be


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--campaigns", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    # ~0.105 impressions/s a campaign and spend every 30 s give ~1M events in 2 h at 1,000 campaigns.
    scale = 1000 / a.campaigns
    cfg = SimConfig(campaigns=a.campaigns, rate=0.105 * scale, spend_interval_s=30.0 / scale, seed=a.seed)
    n, first, last = 0, None, None
    with a.out.open("wb") as f:
        for _, obj in generate(cfg, start_ms=START_MS, duration_s=a.hours * 3600):
            f.write(orjson.dumps(obj) + b"\n")
            first = obj["ts"] if first is None else first
            last = obj["ts"]
            n += 1
            if n >= a.events:
                break
    print(json.dumps({"events": n, "span_s": round(((last or 0) - (first or 0)) / 1000), "campaigns": a.campaigns}))


if __name__ == "__main__":
    main()
