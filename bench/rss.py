"""RSS of a worker over a long run at constant load: is state for expired windows purged?

Usage: python bench/rss.py [--minutes 4] [--rate 5] [--campaigns 200]
Produces simulated traffic in real time, samples the worker's VmRSS every 10 s, and prints
a table (and the slope over the second half) for docs/reliability.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kpimon.broker import bootstrap_servers  # noqa: E402
from kpimon.simulator import SimConfig, run  # noqa: E402
from tests.support.worker import Worker, topic_names  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=4)
    ap.add_argument("--rate", type=float, default=5.0, help="impressions/s per campaign")
    ap.add_argument("--campaigns", type=int, default=200)
    args = ap.parse_args()
    bootstrap = bootstrap_servers() or "127.0.0.1:9092"
    prefix = f"rss{uuid.uuid4().hex[:6]}"
    topics = topic_names(prefix)
    config = {
        "windows": [{"size": "10s"}, {"size": "1m"}],
        "allowed_lateness": "2s",
        "session_timeout": "30s",
        "idle_timeout": "5s",
        "breakdowns": [["campaign"], ["channel"], ["device"], []],
        "measures": {
            "impressions": {"event": "impression"}, "clicks": {"event": "click"},
            "cost": {"event": "click", "sum": "cost"}, "visitors": {"event": "pageview", "distinct": "visitor_id"},
            "sessions": {"event": "session"}, "bounced": {"event": "session", "where": {"bounced": True}},
        },
        "kpis": {"ctr": {"ratio": ["clicks", "impressions"]}, "bounce_rate": {"ratio": ["bounced", "sessions"]},
                 "visitors": {"measure": "visitors"}},
        "targets": {"ctr": {"value": "1%", "min_denominator": 100}},
        "topics": topics,
    }
    worker = Worker(config, bootstrap=bootstrap, app_id=prefix, tmp=Path(tempfile.mkdtemp()))
    worker.start()
    assert worker.proc is not None
    topic_for = {etype: topic for topic, etype in topics["sources"].items()}
    sim = threading.Thread(
        target=run, args=(SimConfig(campaigns=args.campaigns, rate=args.rate, seed=2),),
        kwargs={"bootstrap": bootstrap, "topics": topic_for, "duration_s": args.minutes * 60}, daemon=True,
    )
    sim.start()
    start = time.monotonic()
    samples = []
    try:
        while sim.is_alive():
            samples.append((time.monotonic() - start, rss_mb(worker.proc.pid)))
            print(f"{samples[-1][0]:6.0f} s  {samples[-1][1]:7.1f} MB", flush=True)
            time.sleep(10)
    finally:
        worker.stop()
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    slope = (half[-1][1] - half[0][1]) / max(1.0, (half[-1][0] - half[0][0]) / 60)
    print(f"max {max(r for _, r in samples):.1f} MB; second-half slope {slope:+.2f} MB/min")


if __name__ == "__main__":
    main()
