"""What seasonal drift baselines cost in memory: ``--campaigns`` groups × 3 KPIs with a drift rule,
each fed ``--windows`` hourly windows through the alert engine (a baseline's size does not grow
with its history: 24 hour effects, 7 day effects and a few numbers). Prints JSON."""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arrival import rss_mb  # noqa: E402
from common import log  # noqa: E402

from kpi_core import config  # noqa: E402
from kpi_core.alerting import AlertEngine  # noqa: E402
from kpi_core.plan import Plan  # noqa: E402
from kpi_core.results import Snapshot  # noqa: E402

HOUR = 3_600_000
START = 1_704_067_200_000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--campaigns", type=int, default=10_000)
    ap.add_argument("--windows", type=int, default=24)
    args = ap.parse_args()
    kpis = {"ctr": {"ratio": ["clicks", "impressions"]}, "cpc": {"ratio": ["click_cost", "clicks"], "direction": "lower"},
            "conversion_rate": {"ratio": ["orders", "clicks"]}}
    plan = Plan(config.from_dict({
        "windows": [{"size": "1h"}], "breakdowns": [["campaign"]],
        "measures": {"impressions": {"event": "impression"}, "clicks": {"event": "click"},
                     "click_cost": {"event": "click", "sum": "cost"}, "orders": {"event": "order"}},
        "kpis": kpis, "targets": {k: {"drift": {}} for k in kpis},
    }))
    engine = AlertEngine(plan)
    log(f"baselines: {args.campaigns:,} campaigns x 3 KPIs, {args.windows} hourly windows")
    gc.collect()
    before = rss_mb()
    t0 = time.perf_counter()
    for w in range(args.windows):
        start = START + w * HOUR
        snaps = []
        for c in range(args.campaigns):
            m = {"impressions": 10_000.0 + c % 97, "clicks": 300.0 + w % 7, "click_cost": 150.0 + (c + w) % 13, "orders": 15.0 + c % 3}
            snaps.append(Snapshot("1h", start, start + HOUR, ("campaign",), {"campaign": f"camp-{c:05d}"}, "events", m,
                                  plan.kpi_values(m, "events")))
        engine.evaluate(0, start, "events", snaps)
        engine.changes()
    elapsed = time.perf_counter() - t0
    gc.collect()
    stored = sum(len(json.dumps(m.to_json())) for m in engine.seasonal.values())
    print(json.dumps({"campaigns": args.campaigns, "windows": args.windows, "baselines": len(engine.seasonal),
                      "rss_mb": round(rss_mb() - before), "changelog_bytes_per_baseline": round(stored / max(len(engine.seasonal), 1)),
                      "evaluations_per_s": round(args.campaigns * 3 * args.windows / elapsed)}))


if __name__ == "__main__":
    main()
