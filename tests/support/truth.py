"""Ground truth for chaos tests: a simulated event file, and its window counts computed plainly,
without kpi_core, so a bug shared by the worker and replay can't hide."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer

from kpimon.simulator import SimConfig, generate

T = 1_714_564_800_000  # 2024-05-01T12:00:00Z
WINDOW = 60_000

CONFIG: dict[str, Any] = {
    "windows": [{"size": "1m"}],
    "allowed_lateness": "5s",
    "idle_timeout": "2s",
    "breakdowns": [["campaign"], ["channel"], []],
    "measures": {
        "impressions": {"event": "impression"},
        "clicks": {"event": "click"},
        "click_cost": {"event": "click", "sum": "cost"},
        "orders": {"event": "order"},
        "revenue": {"event": "order", "sum": "revenue"},
    },
    "kpis": {
        "ctr": {"ratio": ["clicks", "impressions"], "unit": "percent"},
        "cpc": {"ratio": ["click_cost", "clicks"], "direction": "lower", "unit": "currency"},
        "aov": {"ratio": ["revenue", "orders"], "unit": "currency"},
    },
}

MEASURED = {"impression": ("impressions", None), "click": ("clicks", "cost"), "order": ("orders", "revenue")}
SUMS = {"click": "click_cost", "order": "revenue"}


def events(n: int, *, campaigns: int = 200, seed: int = 3) -> list[tuple[str, dict[str, Any]]]:
    """The first n simulated events (type, event), with 2024 timestamps."""
    out = []
    for etype, obj in generate(SimConfig(campaigns=campaigns, rate=5.0, seed=seed), start_ms=T, duration_s=None):
        out.append((etype, obj))
        if len(out) >= n:
            return out
    return out


def truth(evs: list[tuple[str, dict[str, Any]]]) -> dict[tuple[str, str, str], dict[str, float]]:
    """(window start ISO, breakdown, group JSON) -> measures, counted directly."""
    from kpi_core.results import iso

    acc: dict[tuple[str, str, str], dict[str, float]] = defaultdict(lambda: {m: 0.0 for m in CONFIG["measures"]})
    for etype, e in evs:
        if etype not in MEASURED:
            continue
        start = iso(e["ts"] - e["ts"] % WINDOW)
        count, _ = MEASURED[etype]
        for breakdown, group in (("campaign", {"campaign": e["campaign"]}), ("channel", {"channel": e["channel"]}), ("total", {})):
            m = acc[(start, breakdown, orjson.dumps(group).decode())]
            m[count] += 1
            if etype in SUMS:
                m[SUMS[etype]] += e["cost" if etype == "click" else "revenue"]
    return dict(acc)


def produce(bootstrap: str, prefix: str, evs: list[tuple[str, dict[str, Any]]]) -> None:
    """Every event to its type's source topic, keyed at random-ish (the worker must not care)."""
    topic_of = {"impression": "ad-impressions", "click": "ad-clicks", "pageview": "page-views", "lead": "leads",
                "order": "orders", "spend": "ad-spend", "survey": "surveys"}
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, batch_size=262_144, acks=1)
    for i, (etype, e) in enumerate(evs):
        producer.send(f"{prefix}-{topic_of[etype]}", key=str(i % 97).encode(), value=orjson.dumps(e), timestamp_ms=e["ts"])
    producer.flush()
    producer.close()


def snapshots(bootstrap: str, topic: str, *, expect: int, timeout: float) -> Iterator[dict[str, Any]]:
    """Read the snapshot topic until ``expect`` distinct windows arrived (or the timeout)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=1000)
    seen: set[bytes] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(seen) < expect:
            for batch in consumer.poll(timeout_ms=500).values():
                for r in batch:
                    seen.add(r.key)
                    yield orjson.loads(r.value) | {"_key": r.key.decode()}
    finally:
        consumer.close()


def compare(got: list[dict[str, Any]], want: dict[tuple[str, str, str], dict[str, float]]) -> list[str]:
    """Differences between published snapshots and the truth; duplicates must be identical."""
    problems: list[str] = []
    by_key: dict[tuple[str, str, str], dict[str, float]] = {}
    for s in got:
        key = (s["start"], s["breakdown"], orjson.dumps(s["group"]).decode())
        if key in by_key and by_key[key] != s["measures"]:
            problems.append(f"{key}: published twice with different values {by_key[key]} / {s['measures']}")
        by_key[key] = s["measures"]
    for key in sorted(want.keys() | by_key.keys()):
        a, b = want.get(key), by_key.get(key)
        # Sums of costs are added in another order across partitions: compare to 1e-9.
        if a is None or b is None or a.keys() != b.keys() or any(not math.isclose(a[m], b[m], rel_tol=1e-9, abs_tol=1e-9) for m in a):
            problems.append(f"{key}: want {a} got {b}")
    return problems
