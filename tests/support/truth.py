"""Ground truth for chaos tests: a simulated event file, and its window counts computed plainly,
without kpi_core, so a bug shared by the worker and replay can't hide."""

from __future__ import annotations

import math
import shutil
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer

from kpimon.simulator import SimConfig, generate
from tests.support.worker import close_input

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


TOPIC_OF = {"impression": "ad-impressions", "click": "ad-clicks", "pageview": "page-views", "lead": "leads",
            "order": "orders", "spend": "ad-spend", "survey": "surveys"}


def produce(bootstrap: str, prefix: str, evs: list[tuple[str, dict[str, Any]]]) -> None:
    """Every event to its type's source topic, keyed at random-ish (the worker must not care)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, batch_size=262_144, acks=1)
    for i, (etype, e) in enumerate(evs):
        producer.send(f"{prefix}-{TOPIC_OF[etype]}", key=str(i % 97).encode(), value=orjson.dumps(e), timestamp_ms=e["ts"])
    producer.flush()
    producer.close()


def close(bootstrap: str, prefix: str, evs: list[tuple[str, dict[str, Any]]], partitions: int = 4) -> None:
    """Move every source past the input's last window, so every window of the truth closes."""
    last = max(e["ts"] for _, e in evs)
    close_input(bootstrap, prefix, last - last % WINDOW + 2 * WINDOW, partitions)


def close_with_kcat(bootstrap: str, prefix: str, evs: list[tuple[str, dict[str, Any]]], partitions: int = 4) -> None:
    """As ``close``, with kcat: a null-valued message with the ``kpimon-watermark`` header per partition."""
    kcat = shutil.which("kcat")
    assert kcat, "kcat is installed by scripts/bootstrap.sh"
    last = max(e["ts"] for _, e in evs)
    ts = last - last % WINDOW + 2 * WINDOW
    for topic in sorted(set(TOPIC_OF.values())):
        for partition in range(partitions):
            # kcat skips empty lines; "key|" with -Z is a message with a null value.
            subprocess.run([kcat, "-P", "-b", bootstrap, "-t", f"{prefix}-{topic}", "-p", str(partition), "-K", "|", "-Z",
                            "-H", f"kpimon-watermark={ts}"], input=b"marker|\n", check=True, capture_output=True)


#: Hostile lines for kcat (key|value): each must be dead-lettered, none may stop anything.
HOSTILE = [b"not json at all", b'{"ts": "yesterday", "campaign": "x", "channel": "y"}', b"[1, 2, 3]",
           b'{"campaign": "no-ts", "channel": "email"}', b'{"ts": 1714564800000, "campaign": "", "channel": "email"}']


def kcat_lines(evs: list[tuple[str, dict[str, Any]]], *, hostile: int = 0, offset: int = 0) -> dict[str, list[bytes]]:
    """``key|json`` lines per source topic (short names), with ``hostile`` bad lines spread over them."""
    lines: dict[str, list[bytes]] = defaultdict(list)
    for i, (etype, e) in enumerate(evs):
        lines[TOPIC_OF[etype]].append(str((i + offset) % 97).encode() + b"|" + orjson.dumps(e))
    topics = sorted(lines)
    for i in range(hostile):
        topic = lines[topics[i % len(topics)]]
        topic.insert((i * 7919) % (len(topic) + 1), b"bad|" + HOSTILE[i % len(HOSTILE)])
    return dict(lines)


class KcatFeed:
    """One kcat producer per topic (a non-Python client), fed its lines evenly over ``seconds``."""

    def __init__(self, bootstrap: str, prefix: str, lines: dict[str, list[bytes]], seconds: float) -> None:
        kcat = shutil.which("kcat")
        assert kcat, "kcat is installed by scripts/bootstrap.sh"
        self.procs = {
            topic: subprocess.Popen([kcat, "-P", "-b", bootstrap, "-t", f"{prefix}-{topic}", "-K", "|"],
                                    stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            for topic in lines
        }
        self.threads = [threading.Thread(target=self._feed, args=(self.procs[t], ls, seconds), daemon=True) for t, ls in lines.items()]
        for t in self.threads:
            t.start()

    @staticmethod
    def _feed(proc: subprocess.Popen[bytes], lines: list[bytes], seconds: float) -> None:
        assert proc.stdin is not None
        steps = max(1, int(seconds / 0.2))
        chunk = max(1, math.ceil(len(lines) / steps))
        began = time.monotonic()
        for k, i in enumerate(range(0, len(lines), chunk)):
            proc.stdin.write(b"\n".join(lines[i : i + chunk]) + b"\n")
            proc.stdin.flush()
            time.sleep(max(0.0, began + (k + 1) * seconds / steps - time.monotonic()))
        proc.stdin.close()

    def join(self, timeout: float = 300) -> None:
        for t in self.threads:
            t.join(timeout)
        for topic, proc in self.procs.items():
            assert proc.wait(timeout) == 0, f"kcat for {topic} failed: {proc.stderr.read().decode() if proc.stderr else ''}"


def dead_letter_sources(bootstrap: str, topic: str, *, expect: int, timeout: float = 60) -> set[tuple[str, str, str]]:
    """The distinct (topic, partition, offset) of dead-lettered inputs (a re-read batch may repeat some)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=1000)
    seen: set[tuple[str, str, str]] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(seen) < expect:
            for batch in consumer.poll(timeout_ms=500).values():
                for r in batch:
                    h = {k: v.decode() for k, v in r.headers}
                    seen.add((h["kpimon-source-topic"], h["kpimon-source-partition"], h["kpimon-source-offset"]))
    finally:
        consumer.close()
    return seen


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
    versions: dict[tuple[str, str, str], tuple[str, int]] = {}
    for s in got:
        key = (s["start"], s["breakdown"], orjson.dumps(s["group"]).decode())
        if key in by_key and by_key[key] != s["measures"]:
            problems.append(f"{key}: published twice with different values {by_key[key]} / {s['measures']}")
        if key in versions and versions[key] != (s["key"], s["version"]):
            problems.append(f"{key}: a repeat must carry the same key and version, got {versions[key]} / {(s['key'], s['version'])}")
        by_key[key] = s["measures"]
        versions[key] = (s["key"], s["version"])
    for key in sorted(want.keys() | by_key.keys()):
        a, b = want.get(key), by_key.get(key)
        # Sums of costs are added in another order across partitions: compare to 1e-9.
        if a is None or b is None or a.keys() != b.keys() or any(not math.isclose(a[m], b[m], rel_tol=1e-9, abs_tol=1e-9) for m in a):
            problems.append(f"{key}: want {a} got {b}")
    return problems


def count(bootstrap: str, topic: str, *, quiet: float = 3.0) -> int:
    """How many records a topic holds: read until nothing new arrived for ``quiet`` seconds."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None)
    n, last = 0, time.monotonic()
    try:
        while time.monotonic() - last < quiet:
            for batch in consumer.poll(timeout_ms=500).values():
                n += len(batch)
                last = time.monotonic()
    finally:
        consumer.close()
    return n


def send_by_campaign(bootstrap: str, prefix: str, evs: list[tuple[str, dict[str, Any]]]) -> None:
    """Every event to its type's source topic, keyed by campaign, as an ad platform connector
    sends reports: one campaign's stay in order. Waits until all are acknowledged."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for etype, e in evs:
        producer.send(f"{prefix}-{TOPIC_OF[etype]}", key=e["campaign"].encode(), value=orjson.dumps(e))
    producer.flush()
    producer.close()


class Growing:
    """A topic of JSON records (snapshots, alerts), read as it grows."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                                      group_id=None, consumer_timeout_ms=500)
        self.seen: list[dict[str, Any]] = []

    def until(self, done: Any, timeout: float) -> list[dict[str, Any]]:
        """Read on until ``done(seen)`` holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for batch in self.consumer.poll(timeout_ms=500).values():
                self.seen += [orjson.loads(r.value) for r in batch]
            if done(self.seen):
                return self.seen
            assert time.monotonic() < deadline, f"timed out after {timeout}s with {len(self.seen)} records"

    def close(self) -> None:
        self.consumer.close()
