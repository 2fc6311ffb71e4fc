"""End to end on the real broker: events in (kafka-python and kcat), exact KPIs on /metrics,
snapshots on Kafka, bad input in the dead-letter topic, and alerts through slack-sdk to a local
Slack Web API server."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from tests.support.slack_api import SlackAPIServer
from tests.support.worker import Worker, close_input, topic_names

T = 1_714_564_800_000  # 2024-05-01T12:00:00Z: historical data must land in 2024 windows
TOKEN = "xoxb-integration-secret-token"

BAD_MESSAGES = [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe\x00 garbage", "invalid_json"),
    (b'{"ts": 1714564801000, "channel": "email", "cost": 1}', "missing_field"),
    (b'{"ts": 1714564801000, "campaign": "alpha", "channel": "email", "cost": -1}', "invalid_value"),
    (b'{"type": "spaceship", "ts": 1714564801000, "campaign": "alpha", "channel": "email"}', "unknown_type"),
    (b'{"ts": "yesterday", "campaign": "alpha", "channel": "email", "cost": 1}', "bad_timestamp"),
]


def _events() -> list[tuple[str, dict[str, Any]]]:
    """(topic suffix, event) for campaigns alpha (email) and beta (social), in one 10 s window."""
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(100):
        out.append(("ad-impressions", {"ts": T + i * 99, "campaign": "alpha", "channel": "email", "device": "mobile"}))
    for i in range(50):
        out.append(("ad-impressions", {"ts": T + i * 150, "campaign": "beta", "channel": "social"}))
    out.append(("ad-clicks", {"ts": T + 1000, "campaign": "alpha", "channel": "email", "cost": 0.5}))
    out.append(("ad-clicks", {"ts": T + 2000, "campaign": "alpha", "channel": "email", "cost": 1.5}))
    for i in range(10):
        out.append(("ad-clicks", {"ts": T + 3000 + i * 100, "campaign": "beta", "channel": "social", "cost": 0.25}))
    out.append(("orders", {"ts": T + 5000, "campaign": "alpha", "channel": "email", "order_id": "o1", "revenue": 80.0, "customer_id": "c1", "new_customer": True}))
    pv = {"campaign": "alpha", "channel": "email", "page": "/landing"}
    out.append(("page-views", {**pv, "ts": T + 1000, "visitor_id": "v1", "session_id": "s1"}))  # bounces
    out.append(("page-views", {**pv, "ts": T + 2000, "visitor_id": "v2", "session_id": "s2"}))
    out.append(("page-views", {**pv, "ts": T + 4000, "visitor_id": "v2", "session_id": "s2", "page": "/pricing"}))
    return out


def _kcat_lines() -> list[bytes]:
    """Campaign gamma (social) sent by a non-Python client: 20 impressions, 4 clicks at 1.0."""
    lines = [b"k|" + orjson.dumps({"ts": T + 100 * i, "campaign": "gamma", "channel": "social"}) for i in range(20)]
    clicks = [b"k|" + orjson.dumps({"ts": T + 500 * i, "campaign": "gamma", "channel": "social", "cost": 1.0}) for i in range(4)]
    return lines + clicks


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackAPIServer]:
    with SlackAPIServer(token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, slack: SlackAPIServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One worker, fed once; the tests below each check one aspect of what came out."""
    prefix = f"it{uuid.uuid4().hex[:8]}"
    topics = topic_names(prefix)
    config = {
        "windows": [{"size": "10s"}],
        "allowed_lateness": "2s",
        "session_timeout": "20s",
        "idle_timeout": "3s",
        "breakdowns": [["campaign"], ["channel"], []],
        "measures": {
            "impressions": {"event": "impression"},
            "clicks": {"event": "click"},
            "click_cost": {"event": "click", "sum": "cost"},
            "orders": {"event": "order"},
            "sessions": {"event": "session"},
            "bounced_sessions": {"event": "session", "where": {"bounced": True}},
        },
        "kpis": {
            "ctr": {"ratio": ["clicks", "impressions"], "direction": "higher", "unit": "percent"},
            "cpc": {"ratio": ["click_cost", "clicks"], "direction": "lower", "unit": "currency"},
            "conversion_rate": {"ratio": ["orders", "clicks"], "direction": "higher", "unit": "percent"},
            "bounce_rate": {"ratio": ["bounced_sessions", "sessions"], "direction": "lower", "unit": "percent"},
        },
        "targets": {"ctr": {"value": "5%"}},
        "topics": topics,
    }
    env = {"SLACK_BOT_TOKEN": TOKEN, "SLACK_CHANNEL": "#kpi-alerts", "SLACK_API_URL": slack.base_url}
    worker = Worker(config, bootstrap=kafka_bootstrap, app_id=prefix, tmp=tmp_path_factory.mktemp("worker"), env=env)
    worker.start()
    try:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for i, (suffix, event) in enumerate(_events()):
            producer.send(f"{prefix}-{suffix}", key=str(i).encode(), value=orjson.dumps(event))
        for raw, _ in BAD_MESSAGES:
            producer.send(f"{prefix}-ad-clicks", value=raw)
        producer.flush()
        kcat = shutil.which("kcat")
        assert kcat, "kcat is installed by scripts/bootstrap.sh"
        imps, clicks = _kcat_lines()[:20], _kcat_lines()[20:]
        for topic, lines in ((f"{prefix}-ad-impressions", imps), (f"{prefix}-ad-clicks", clicks)):
            subprocess.run([kcat, "-P", "-b", kafka_bootstrap, "-t", topic, "-K", "|"], input=b"\n".join(lines) + b"\n", check=True)
        producer.close()
        # Progress markers move every source past the window (and its sessions) in event time;
        # they are not events, so no later window replaces the gauges.
        close_input(kafka_bootstrap, prefix, T + 60_000, topics["partitions"])
        yield {"worker": worker, "prefix": prefix, "bootstrap": kafka_bootstrap, "topics": topics}
    finally:
        worker.stop()


def _kpi(worker: Worker, kpi: str, **group: str) -> float:
    breakdown = ",".join(group) if group else "total"
    return worker.wait_for("kpimon_kpi_value", {"kpi": kpi, "window": "10s", "breakdown": breakdown, **group})


@pytest.mark.parametrize(
    ("kpi", "group", "expected"),
    [
        ("ctr", {"campaign": "alpha"}, 2 / 100),
        ("cpc", {"campaign": "alpha"}, 1.0),  # (0.5 + 1.5) / 2
        ("conversion_rate", {"campaign": "alpha"}, 0.5),  # 1 order / 2 clicks
        ("bounce_rate", {"campaign": "alpha"}, 0.5),  # s1 bounced, s2 saw two pages
        ("ctr", {"campaign": "beta"}, 10 / 50),
        ("cpc", {"campaign": "beta"}, 0.25),
        ("conversion_rate", {"campaign": "beta"}, 0.0),
        ("ctr", {"campaign": "gamma"}, 4 / 20),  # produced by kcat
        ("cpc", {"campaign": "gamma"}, 1.0),
        ("ctr", {"channel": "email"}, 2 / 100),
        ("ctr", {"channel": "social"}, 14 / 70),  # beta + gamma: summed, never averaged
        ("ctr", {}, 16 / 170),
        ("cpc", {}, (2.0 + 2.5 + 4.0) / 16),
    ],
)
def test_exact_kpis_on_metrics(run: dict[str, Any], kpi: str, group: dict[str, str], expected: float) -> None:
    assert _kpi(run["worker"], kpi, **group) == pytest.approx(expected, rel=1e-12)


def test_missing_kpi_has_no_series(run: dict[str, Any]) -> None:
    worker = run["worker"]
    _kpi(worker, "bounce_rate", campaign="alpha")  # the sessions phase has closed
    beta = [dict(k) for k in worker.samples("kpimon_kpi_value") if dict(k).get("campaign") == "beta"]
    assert sorted(d["kpi"] for d in beta) == ["conversion_rate", "cpc", "ctr"]  # beta had no sessions


def test_measures_and_counters(run: dict[str, Any]) -> None:
    worker = run["worker"]
    _kpi(worker, "ctr", campaign="alpha")
    measures = {(d["measure"], d["campaign"]): v for d, v in ((dict(k), v) for k, v in worker.samples("kpimon_measure_value").items()) if d["breakdown"] == "campaign"}
    assert measures[("impressions", "alpha")] == 100
    assert measures[("clicks", "gamma")] == 4
    events = {dict(k)["type"]: v for k, v in worker.samples("kpimon_events_total").items()}
    assert events == {"impression": 170, "click": 16, "order": 1, "pageview": 3}
    invalid = {dict(k)["reason"]: v for k, v in worker.samples("kpimon_events_invalid_total").items()}
    assert invalid == {"invalid_json": 2, "missing_field": 1, "invalid_value": 1, "unknown_type": 1, "bad_timestamp": 1}
    targets = {dict(k)["campaign"]: v for k, v in worker.samples("kpimon_kpi_target").items() if dict(k)["breakdown"] == "campaign"}
    assert targets["alpha"] == 0.05
    firing = {dict(k)["campaign"]: v for k, v in worker.samples("kpimon_alert_firing").items() if dict(k)["breakdown"] == "campaign"}
    assert firing == {"alpha": 1.0, "beta": 0.0, "gamma": 0.0}
    lag_topics = {dict(k)["topic"] for k in worker.samples("kpimon_consumer_lag")}
    assert set(run["topics"]["sources"]) <= lag_topics
    assert worker.samples("kpimon_worker_start_time_seconds")


def test_promtool_accepts_the_exposition(run: dict[str, Any], tmp_path: Path) -> None:
    worker = run["worker"]
    _kpi(worker, "ctr", campaign="alpha")
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes from Debian's prometheus package (scripts/bootstrap.sh)"
    result = subprocess.run([promtool, "check", "metrics"], input=worker.scrape().encode(), capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def _consume(bootstrap: str, topic: str, count: int, timeout: float = 30) -> list[Any]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=f"check-{uuid.uuid4().hex[:6]}")
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    return records


def test_bad_input_lands_in_dead_letters_and_the_worker_stays_up(run: dict[str, Any]) -> None:
    records = _consume(run["bootstrap"], run["topics"]["dead_letters"], len(BAD_MESSAGES))
    got = sorted((r.value, dict(r.headers)["kpimon-reason"].decode()) for r in records)
    assert got == sorted(BAD_MESSAGES)
    assert all(dict(r.headers)["kpimon-source-topic"] == f"{run['prefix']}-ad-clicks".encode() for r in records)
    assert run["worker"].health()["status"] == "ok"


def test_snapshots_are_published(run: dict[str, Any]) -> None:
    _kpi(run["worker"], "bounce_rate", campaign="alpha")
    records = _consume(run["bootstrap"], run["topics"]["snapshots"], 1)
    records = _consume(run["bootstrap"], run["topics"]["snapshots"], len(records) + 100, timeout=5)
    snaps = [orjson.loads(r.value) for r in records]
    assert [r.key.decode() for r in records] == [s["key"] for s in snaps]  # the record key is the snapshot's key
    alpha = [s for s in snaps if s["group"] == {"campaign": "alpha"} and s["phase"] == "events"]
    assert alpha == [
        {
            "key": "10s|1714564800000|events|campaign|alpha",
            "version": 1,
            "window": "10s",
            "start": "2024-05-01T12:00:00Z",
            "end": "2024-05-01T12:00:10Z",
            "breakdown": "campaign",
            "group": {"campaign": "alpha"},
            "phase": "events",
            "measures": {"impressions": 100.0, "clicks": 2.0, "click_cost": 2.0, "orders": 1.0},
            "kpis": {"ctr": 0.02, "cpc": 1.0, "conversion_rate": 0.5},
            "provisional": {},
            "waiting_for": [],
        }
    ]


def test_slack_alert_for_each_breaching_group_only(run: dict[str, Any], slack: SlackAPIServer) -> None:
    _kpi(run["worker"], "ctr", channel="email")
    deadline = time.monotonic() + 20
    while len(slack.messages) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # anything extra would arrive now
    texts = sorted(m["text"] for m in slack.messages)
    assert len(texts) == 2, texts
    assert "campaign=alpha" in texts[0] and "channel=email" in texts[1]
    for text in texts:
        assert "ctr 2.00% is below target 5.00%" in text
        assert "2 clicks / 100 impressions" in text
        assert "10s 2024-05-01T12:00:00Z–2024-05-01T12:00:10Z" in text
    assert all(m["channel"] == "#kpi-alerts" for m in slack.messages)
    assert TOKEN not in run["worker"].log()
