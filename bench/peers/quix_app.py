"""The Quix Streams peer: the same per-campaign 1-minute KPIs as kpimon's "peer" catalogue.

Runs in its own virtualenv (bench/run.py creates it; Quix Streams is not a kpimon dependency).
Reads the 7 preloaded source topics, takes event time from each event's ``ts``, re-keys by campaign
through one intermediate topic (what ``group_by`` does internally; done by hand because Quix names
the state of 7 merged topics after all of them, past Kafka's 255-character limit), sums the measures
in 1-minute tumbling windows with 10 s grace (RocksDB state), and emits each closed window with its KPIs. The rate is
over every event that reached the window step; of those, it counts the ones absorbed into window
state and the ones Quix dropped as late. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from datetime import datetime
from typing import Any

from quixstreams import Application

WINDOW_MS, GRACE_MS = 60_000, 10_000
MEASURES = ("impressions", "clicks", "click_cost", "pageviews", "leads", "orders", "revenue", "spend")
counts = {"processed": 0, "absorbed": 0, "late": 0, "windows": 0}
marks: dict[str, float] = {}


def event_ms(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    ts = value.get("ts") if isinstance(value, dict) else None
    if isinstance(ts, (int, float)):
        return int(ts)
    if isinstance(ts, str):
        return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)
    return timestamp


def contribution(event: dict[str, Any]) -> dict[str, float]:
    # Every event that reaches the window step, absorbed or then dropped as late: the rate is
    # over these, so a run where Quix drops most events as late is not timed on the few it kept.
    counts["processed"] += 1
    now = time.monotonic()
    marks.setdefault("first", now)
    marks["last"] = now
    t = event.get("type")
    out = dict.fromkeys(MEASURES, 0.0)
    if t == "impression":
        out["impressions"] = 1.0
    elif t == "click":
        out["clicks"], out["click_cost"] = 1.0, float(event.get("cost", 0.0))
    elif t == "pageview":
        out["pageviews"] = 1.0
    elif t == "lead":
        out["leads"] = 1.0
    elif t == "order":
        out["orders"], out["revenue"] = 1.0, float(event.get("revenue", 0.0))
    elif t == "spend":
        out["spend"] = float(event.get("amount", 0.0))
    return out


def absorbed() -> None:
    counts["absorbed"] += 1


def initializer(value: dict[str, float]) -> dict[str, float]:
    absorbed()
    return dict(value)


def reducer(acc: dict[str, float], value: dict[str, float]) -> dict[str, float]:
    absorbed()
    for k, v in value.items():
        acc[k] += v
    return acc


def on_late(*_: Any, **__: Any) -> bool:
    counts["late"] += 1
    return False  # counted, not logged per record


def kpis(window: dict[str, Any]) -> dict[str, Any]:
    m = window["value"]
    cost = m["click_cost"] + m["spend"]
    ratio = lambda a, b: a / b if b else None  # noqa: E731
    counts["windows"] += 1
    return {"start": window["start"], "ctr": ratio(m["clicks"], m["impressions"]), "cpc": ratio(m["click_cost"], m["clicks"]),
            "cpl": ratio(cost, m["leads"]), "cpa": ratio(cost, m["orders"]), "roas": ratio(m["revenue"], cost),
            "conversion": ratio(m["orders"], m["clicks"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--idle", type=float, default=20.0, help="stop this long after the last absorbed event")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("topics", nargs="+")
    args = ap.parse_args()

    app = Application(broker_address=args.bootstrap, consumer_group=args.group, auto_offset_reset="earliest",
                      state_dir=args.state_dir, loglevel="WARNING")
    by_campaign = app.topic(f"{args.group}-by-campaign", value_deserializer="json", value_serializer="json",
                            timestamp_extractor=event_ms)
    for t in args.topics:
        source = app.dataframe(app.topic(t, value_deserializer="json", timestamp_extractor=event_ms))
        source.to_topic(by_campaign, key=lambda event: event["campaign"])
    sdf = app.dataframe(by_campaign)
    sdf = sdf.apply(contribution)
    sdf = sdf.tumbling_window(WINDOW_MS, grace_ms=GRACE_MS, on_late=on_late).reduce(reducer, initializer).final()
    sdf = sdf.apply(kpis)

    t0 = time.monotonic()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            done = counts["processed"] >= args.expect
            idle = "last" in marks and now - marks["last"] > args.idle
            if done or idle or now - t0 > args.timeout:
                app.stop()
                return

    threading.Thread(target=watch, daemon=True).start()
    app.run()
    first, last = marks.get("first", t0), marks.get("last", t0)
    print(json.dumps({
        "processed": counts["processed"], "absorbed": counts["absorbed"], "late": counts["late"],
        "windows_closed": counts["windows"], "complete": counts["processed"] >= args.expect,
        "start_to_first_s": round(first - t0, 3), "start_to_last_s": round(last - t0, 3),
        "rate_from_first": round(counts["processed"] / max(last - first, 1e-9)),
        "rate_from_start": round(counts["processed"] / max(last - t0, 1e-9)),
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
