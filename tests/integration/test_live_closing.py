"""Live data closes its windows on the wall clock: events stamped now, then silence, and the
window is published a few seconds after its end, exact, with nothing late. (Historical data
holds windows open instead; that side is in tests/chaos/test_backfill_pause.py.)"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer

from tests.support.worker import Worker, topic_names

WINDOW_MS = 5_000


def _config(prefix: str) -> dict[str, Any]:
    return {
        "windows": [{"size": "5s"}],
        "allowed_lateness": "1s",
        "idle_timeout": "2s",
        "breakdowns": [["campaign"], []],
        "measures": {"impressions": {"event": "impression"}, "clicks": {"event": "click"}, "orders": {"event": "order"}},
        "kpis": {"ctr": {"ratio": ["clicks", "impressions"], "unit": "percent"}},
        "topics": topic_names(prefix),
    }


def test_a_live_stream_that_goes_quiet_closes_its_window_on_the_wall_clock(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = f"live{uuid.uuid4().hex[:8]}"
    config = _config(prefix)
    worker = Worker(config, bootstrap=kafka_bootstrap, app_id=prefix, tmp=tmp_path).start()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    try:
        # Start on a window boundary, then send in real time for 4 s: every event is live.
        start = (int(time.time() * 1000) // WINDOW_MS + 2) * WINDOW_MS
        time.sleep(max(0.0, start / 1000 - time.time()))
        # One order, early: a sparse live source that must not hold the window once caught up.
        producer.send(f"{prefix}-orders", orjson.dumps({"ts": int(time.time() * 1000), "campaign": "alpha", "channel": "email",
                                                         "order_id": "o1", "revenue": 10.0, "customer_id": "c1", "new_customer": True}))
        for i in range(40):
            now = int(time.time() * 1000)
            assert now < start + WINDOW_MS, "the machine is too slow for a 5 s window"
            producer.send(f"{prefix}-ad-impressions", orjson.dumps({"ts": now, "campaign": "alpha", "channel": "email"}))
            if i % 8 == 0:
                producer.send(f"{prefix}-ad-clicks", orjson.dumps({"ts": now, "campaign": "alpha", "channel": "email", "cost": 0.5}))
            producer.flush()
            time.sleep(0.1)
        consumer = KafkaConsumer(config["topics"]["snapshots"], bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                 group_id=None, enable_auto_commit=False)
        got: dict[str, Any] | None = None
        deadline = time.monotonic() + 60
        while got is None and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                for r in batch:
                    snap = orjson.loads(r.value)
                    if snap["breakdown"] == "campaign":
                        got = snap
        published = time.time() * 1000
        consumer.close()
        assert got is not None, f"no snapshot within 60 s:\n{worker.log()[-3000:]}"
        assert got["measures"] == {"impressions": 40.0, "clicks": 5.0, "orders": 1.0}
        assert got["kpis"] == {"ctr": 5 / 40}
        # Closed by the wall clock: lateness (1 s) plus idle_timeout (2 s) after the last event,
        # with slack for a loaded machine; never by data that did not exist.
        assert published - (start + WINDOW_MS) < 15_000
        assert sum(worker.samples("kpimon_events_late_total").values()) == 0
    finally:
        producer.close()
        worker.stop()
