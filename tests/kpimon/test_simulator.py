"""Tests for the traffic simulator: contract conformance, ordering, determinism, anomalies."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest

from kpi_core.config import Topics
from kpi_core.events import EVENT_TYPES, validate
from kpimon import simulator
from kpimon.simulator import Anomaly, SimConfig, SimulatorError, generate, run
from tests.kpimon.test_producer import FakeFuture, FakeProducer, consume, create_topics, fake_kafka  # noqa: F401 (a fixture)

START = 1_714_564_800_000  # 2024-05-01T12:00:00Z
TOPIC_FOR = {etype: topic for topic, etype in Topics().types().items()}


def _events(cfg: SimConfig, duration_s: float) -> list[tuple[str, dict[str, Any]]]:
    return list(generate(cfg, start_ms=START, duration_s=duration_s))


@pytest.fixture(scope="module")
def five_minutes() -> list[tuple[str, dict[str, Any]]]:
    """Five minutes of the default traffic: long enough for every event type to appear."""
    return _events(SimConfig(), 300)


def test_every_event_passes_the_contract_on_its_topic(five_minutes: list[tuple[str, dict[str, Any]]]) -> None:
    """Each event validates with the type its topic implies, and says that type itself."""
    for etype, obj in five_minutes:
        event = validate(orjson.loads(orjson.dumps(obj)), etype)
        assert (event.type, event.ts, obj["type"]) == (etype, obj["ts"], etype)
    assert set(Counter(etype for etype, _ in five_minutes)) == set(EVENT_TYPES)


def test_events_are_in_event_time_order_within_the_run(five_minutes: list[tuple[str, dict[str, Any]]]) -> None:
    """Event times never go backwards and stay inside [start, start + duration)."""
    times = [obj["ts"] for _, obj in five_minutes]
    assert times == sorted(times)
    assert START <= times[0] and times[-1] < START + 300_000
    assert all(type(t) is int for t in times)


def test_same_seed_same_traffic_other_seed_other_traffic() -> None:
    """Generation is a pure function of the config (seed included) and the start."""
    cfg = SimConfig(campaigns=5, rate=10)
    first = _events(cfg, 60)
    assert first == _events(cfg, 60)
    assert first != _events(SimConfig(campaigns=5, rate=10, seed=cfg.seed + 1), 60)


def test_tiny_config_counts_are_reproducible() -> None:
    """A tiny run gives the same counts every time, and the counts that follow from the config."""
    cfg = SimConfig(campaigns=6, rate=5, seed=3)
    counts = Counter(etype for etype, _ in _events(cfg, 60))
    assert counts == Counter(etype for etype, _ in _events(cfg, 60))
    # One spend per spending campaign (paid_search, social, email) every 10 s over 60 s.
    assert counts["spend"] == 3 * 6
    # 6 campaigns at 5/s (times a 0.5..1.5 spread) for 60 s.
    assert 900 <= counts["impression"] <= 2700
    assert counts["click"] <= counts["pageview"]


def test_journeys_hang_together() -> None:
    """Sessions, leads and orders follow from clicks and keep their campaign."""
    events = _events(SimConfig(campaigns=6, rate=50, seed=11), 240)
    channel_of = {obj["campaign"]: obj["channel"] for etype, obj in events if etype == "impression"}
    sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    stages: dict[str, list[str]] = defaultdict(list)
    landing = {}
    for etype, obj in events:
        assert obj["channel"] == channel_of[obj["campaign"]]  # a campaign's channel is fixed
        if etype == "click":
            landing[obj["campaign"]] = obj["landing_page"]
            if obj["channel"] not in ("paid_search", "social"):
                assert obj["cost"] == 0.0
        elif etype == "pageview":
            sessions[obj["session_id"]].append(obj)
        elif etype == "lead":
            stages[obj["lead_id"]].append(obj["stage"])
    for views in sessions.values():
        assert views[0]["page"] == landing[views[0]["campaign"]]
        assert len({(v["campaign"], v["visitor_id"]) for v in views}) == 1
    assert all(s in (["lead"], ["lead", "mql"], ["lead", "mql", "sql"]) for s in stages.values())
    assert {len(s) for s in stages.values()} == {1, 2, 3}


def test_ctr_drop_hits_only_the_named_campaign() -> None:
    """A 0.3 factor on camp-003 from 60 s cuts its CTR below half; camp-004's CTR holds."""
    cfg = SimConfig(campaigns=5, rate=200, seed=5)
    drop_at = START + 60_000
    anomaly = Anomaly(campaign="camp-003", kpi="ctr", factor=0.3, start_s=60)

    def counts() -> Counter[tuple[str, str, bool]]:
        return Counter(
            (obj["campaign"], etype, obj["ts"] >= drop_at)
            for etype, obj in generate(cfg, start_ms=START, duration_s=180, anomalies=[anomaly])
            if etype in ("impression", "click")
        )

    c = counts()
    assert c == counts()

    def ctr(campaign: str, after: bool) -> float:
        return c[campaign, "click", after] / c[campaign, "impression", after]

    assert ctr("camp-003", True) < 0.5 * ctr("camp-003", False)
    assert 0.6 * ctr("camp-004", False) <= ctr("camp-004", True) <= 1.4 * ctr("camp-004", False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"campaign": "camp-000", "kpi": "cpc"}, "anomaly kpi must be one of ctr"),  # only CTR can be distorted
        ({"campaign": "camp-000", "factor": -1}, "must be >= 0"),  # a negative CTR is meaningless
    ],
)
def test_bad_anomaly_is_rejected(kwargs: dict[str, Any], message: str) -> None:
    """An anomaly names a supported KPI and a usable factor."""
    with pytest.raises(SimulatorError, match=message):
        Anomaly(**kwargs)


def test_anomaly_on_an_unknown_campaign_is_rejected() -> None:
    """A typo in the campaign name fails loudly instead of simulating nothing."""
    with pytest.raises(SimulatorError, match="camp-042"):
        next(generate(SimConfig(campaigns=3), start_ms=START, duration_s=10, anomalies=[Anomaly("camp-042")]))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"campaigns": 0},  # nothing to simulate
        {"bounce_prob": 1.5},  # not a probability
        {"ctr_range": (0.06, 0.02)},  # low above high
        {"devices": ()},  # nothing to draw from
    ],
)
def test_bad_config_is_rejected(kwargs: dict[str, Any]) -> None:
    """Settings that make no sense fail at construction."""
    with pytest.raises(SimulatorError):
        SimConfig(**kwargs)


def test_run_sends_each_type_to_its_topic_stamped_with_event_time(fake_kafka: type[FakeProducer]) -> None:
    """Fast mode sends the generated events in order; types without a topic are skipped."""
    cfg = SimConfig(campaigns=4, rate=20)
    topics = {t: n for t, n in TOPIC_FOR.items() if t != "impression"}
    n = run(cfg, bootstrap="localhost:1", topics=topics, duration_s=60, realtime=False, start_ms=START)
    expected = [obj for etype, obj in _events(cfg, 60) if etype != "impression"]
    producer = fake_kafka.instances[0]
    assert n == len(producer.sent) == len(expected)
    assert producer.sent == [
        (TOPIC_FOR[obj["type"]], orjson.dumps(obj), (obj.get("visitor_id") or obj["campaign"]).encode(), obj["ts"])
        for obj in expected
    ]
    assert producer.config["linger_ms"] == 20 and producer.closed


def test_run_flushes_and_returns_on_ctrl_c(fake_kafka: type[FakeProducer]) -> None:
    """KeyboardInterrupt ends an endless run cleanly with what was sent so far."""
    fake_kafka.interrupt_after = 50
    n = run(SimConfig(), bootstrap="localhost:1", topics=TOPIC_FOR, duration_s=None, realtime=False, start_ms=START)
    assert n == 50
    assert fake_kafka.instances[0].flushed and fake_kafka.instances[0].closed


def test_run_counts_only_delivered_events(fake_kafka: type[FakeProducer]) -> None:
    """Sends that Kafka fails are not counted as produced."""
    fake_kafka.fail = RuntimeError("broker gone")
    assert run(SimConfig(campaigns=1), bootstrap="localhost:1", topics=TOPIC_FOR, duration_s=5, realtime=False, start_ms=START) == 0


class FakeClock:
    """Wall-clock time that only moves when the simulator sleeps."""

    def __init__(self, start_s: float) -> None:
        self.now = start_s

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def test_run_in_realtime_waits_for_event_time(fake_kafka: type[FakeProducer], monkeypatch: pytest.MonkeyPatch) -> None:
    """Realtime mode sleeps until each event's time has come on the wall clock."""
    clock = FakeClock(START / 1000)
    monkeypatch.setattr(simulator, "time", clock)
    early: list[int] = []
    real_send = FakeProducer.send

    def send(self: FakeProducer, topic: str, **kw: Any) -> FakeFuture:
        if clock.now * 1000 < kw["timestamp_ms"] - 5:  # 5 ms: the simulator doesn't sleep for less
            early.append(kw["timestamp_ms"])
        return real_send(self, topic, **kw)

    monkeypatch.setattr(FakeProducer, "send", send)
    n = run(SimConfig(campaigns=2, rate=5), bootstrap="localhost:1", topics=TOPIC_FOR, duration_s=5, start_ms=START)
    assert n == len(fake_kafka.instances[0].sent) > 0
    assert early == []
    assert START + 4000 <= clock.now * 1000 < START + 5000  # slept until the last event, not beyond


@pytest.mark.integration
def test_run_against_kafka(kafka_bootstrap: str, unique_prefix: str) -> None:
    """Through a real broker: every simulated event arrives on its topic, stamped with its event time."""
    cfg = SimConfig(campaigns=3, rate=5)
    start = int(time.time() * 1000) - 120_000  # recent: brokers may reject timestamps far from now
    topics = {etype: f"{unique_prefix}-{etype}" for etype in EVENT_TYPES}
    create_topics(kafka_bootstrap, topics.values())
    n = run(cfg, bootstrap=kafka_bootstrap, topics=topics, duration_s=60, realtime=False, start_ms=start)
    expected = list(generate(cfg, start_ms=start, duration_s=60))
    records = consume(kafka_bootstrap, topics.values(), n, f"{unique_prefix}-g")
    assert n == len(expected) == len(records)
    assert sorted((r.topic, r.timestamp, r.value) for r in records) == sorted(
        (topics[etype], obj["ts"], orjson.dumps(obj)) for etype, obj in expected
    )


def test_platform_delivery_sends_late_restated_spend_reports_lead_syncs_and_lagging_orders() -> None:
    from kpimon.simulator import Delivery, deliver, generate

    cfg = SimConfig(campaigns=4, rate=2.0, seed=3)
    start = 1_714_564_800_000
    events = list(generate(cfg, start_ms=start, duration_s=3 * 3600))
    d = Delivery(spend_period_s=3600, spend_delay_s=7200, restate_after_s=1800, restate_credit=0.1, lead_sync_s=900, order_lag_s=1800)
    arrived = list(deliver(iter(events), d))
    # Nothing is lost but spend, which becomes reports: the rest arrive once each.
    assert sorted(orjson.dumps(o) for _, t, o in arrived if t != "spend") == sorted(orjson.dumps(o) for t, o in events if t != "spend")
    assert [a for a, _, _ in arrived] == sorted(a for a, _, _ in arrived)  # in arrival order
    for at, etype, obj in arrived:
        assert at >= obj["ts"]
        if etype == "lead":
            assert at % 900_000 == 0 and at - obj["ts"] <= 900_000
        elif etype == "order":
            assert at == obj["ts"] + 1_800_000
    # One report per campaign, channel and hour (ts = the hour), 2 h after the hour; its
    # restatement half an hour later with 10% credited back.
    spent: dict[tuple[int, str, str], float] = {}
    for t, o in events:
        if t == "spend":
            key = (o["ts"] - o["ts"] % 3_600_000, o["campaign"], o["channel"])
            spent[key] = spent.get(key, 0.0) + o["amount"]
    reports = {(o["ts"], o["campaign"], o["channel"], o["report_version"]): (at, o["amount"]) for at, t, o in arrived if t == "spend"}
    assert {k[:3] for k in reports} == set(spent)
    for (hour, campaign, channel), total in spent.items():
        at1, first = reports[(hour, campaign, channel, 1)]
        at2, second = reports[(hour, campaign, channel, 2)]
        assert (at1, at2) == (hour + 3 * 3_600_000, hour + 3 * 3_600_000 + 1_800_000)
        assert first == round(total, 2) and second == round(first * 0.9, 2)
