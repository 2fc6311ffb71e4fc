"""Tracker formats through the real broker and worker (docs/formats.md).

One worker reads kpimon's own topics and one topic per tracker format, and is fed:

- the same simulated traffic once per format (campaigns ``sim-<format>-camp-NNN``): the
  trackers' events (page views, leads, orders) written as Segment, Snowplow and GA4 would
  send them, the ad platforms' events (impressions, clicks, spend) in kpimon's contract;
  every format must give the very snapshots kpimon's own contract gives;
- fixtures written by hand from each format's public specification
  (tests/fixtures/trackers, with the KPIs computed by hand in expected.json);
- messages that break their format, which must reach dead-letters naming format and field.

Each tracker topic stamps its events with a constant attribute ``tracker`` (a mapping's
``value:``), so the fixtures' direct traffic, ``(not set)`` in every format, stays apart.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from kpi_core import config as config_mod
from kpi_core.pipeline import run_all
from kpi_core.plan import Plan
from kpimon.simulator import SimConfig, generate
from kpimon.trackers import CARRIED, WRITERS
from tests.support.worker import Worker, close_input, topic_names

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "trackers"
T0 = 1_709_632_800_000  # 2024-03-05T10:00:00Z: the fixtures' hour
T_SIM = T0 + 3_600_000  # the simulated traffic follows it (a page view late for a closed window starts no session)
TRACKERS = ("segment", "snowplow", "ga4")
FORMATS = ("kpimon", *TRACKERS)
SIM_SECONDS = 600

MEASURES = {
    "impressions": {"event": "impression"},
    "clicks": {"event": "click"},
    "click_cost": {"event": "click", "sum": "cost"},
    "spend": {"event": "spend", "sum": "amount"},
    "pageviews": {"event": "pageview"},
    "unique_visitors": {"event": "pageview", "distinct": "visitor_id"},
    "sessions": {"event": "session"},
    "bounced_sessions": {"event": "session", "where": {"bounced": True}},
    "session_pageviews": {"event": "session", "sum": "pageviews"},
    "leads": {"event": "lead", "where": {"stage": "lead"}},
    "mqls": {"event": "lead", "where": {"stage": "mql"}},
    "orders": {"event": "order"},
    "revenue": {"event": "order", "sum": "revenue"},
    "new_customers": {"event": "order", "where": {"new_customer": True}},
}
KPIS = {
    "ctr": {"ratio": ["clicks", "impressions"], "unit": "percent"},
    "bounce_rate": {"ratio": ["bounced_sessions", "sessions"], "direction": "lower", "unit": "percent"},
    "session_to_order": {"ratio": ["orders", "sessions"], "unit": "percent"},
    "visitor_to_lead": {"ratio": ["leads", "sessions"], "unit": "percent"},
    "lead_to_mql": {"ratio": ["mqls", "leads"], "unit": "percent"},
    "aov": {"ratio": ["revenue", "orders"], "unit": "currency"},
}


def _config(prefix: str) -> dict[str, Any]:
    topics = topic_names(prefix)
    for fmt in TRACKERS:
        topics["sources"][f"{prefix}-{fmt}"] = {"format": fmt, "fields": {"tracker": {"value": fmt}}}
    return {
        "windows": [{"size": "5m"}, {"size": "1h"}],
        "allowed_lateness": "5s",
        "idle_timeout": "3s",
        "attributes": ["device", "country", "tracker"],
        "breakdowns": [["campaign"], ["campaign", "device"], ["tracker", "campaign"], ["tracker", "channel"]],
        "measures": MEASURES,
        "kpis": KPIS,
        "topics": topics,
    }


def _simulated() -> list[tuple[str, dict[str, Any]]]:
    sim = SimConfig(campaigns=4, rate=4.0, spend_interval_s=60, seed=11)
    return list(generate(sim, start_ms=T_SIM, duration_s=SIM_SECONDS))


def _messages(prefix: str, topics: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
    """(topic, value) for the simulated traffic once per format."""
    by_type = {etype: topic for topic, etype in config_mod.Topics.model_validate(topics).types().items()}
    for etype, event in _simulated():
        for fmt in FORMATS:
            renamed = {**event, "campaign": f"sim-{fmt}-{event['campaign']}"}
            if fmt != "kpimon" and etype in CARRIED[fmt]:
                yield f"{prefix}-{fmt}", orjson.dumps(WRITERS[fmt](etype, renamed))
            else:
                yield by_type[etype], orjson.dumps(renamed)


def _bad() -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (FIXTURES / "bad.jsonl").read_bytes().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    prefix = f"tf{uuid.uuid4().hex[:8]}"
    config = _config(prefix)
    worker = Worker(config, bootstrap=kafka_bootstrap, app_id=prefix, tmp=tmp_path_factory.mktemp("trackers"))
    worker.start()
    try:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20, batch_size=256 * 1024)
        for fmt in TRACKERS:  # the fixtures' hour first: the simulated hour after it
            for line in (FIXTURES / f"{fmt}.jsonl").read_bytes().splitlines():
                if line.strip():
                    producer.send(f"{prefix}-{fmt}", value=line)
        for bad in _bad():
            producer.send(f"{prefix}-{bad['format']}", value=orjson.dumps(bad["message"]))
        producer.flush()
        for topic, value in _messages(prefix, config["topics"]):
            producer.send(topic, value=value)
        producer.flush()
        producer.close()
        # Past the last hour and its sessions' timeout, on every source.
        close_input(kafka_bootstrap, prefix, T_SIM + 3 * 3_600_000, config["topics"]["partitions"],
                    topics=[t.removeprefix(f"{prefix}-") for t in config["topics"]["sources"]])
        yield {"worker": worker, "prefix": prefix, "bootstrap": kafka_bootstrap, "config": config}
    finally:
        worker.stop()


def _consume(bootstrap: str, topic: str, enough: Any, timeout: float = 90) -> list[Any]:
    """Records of ``topic`` until ``enough(records)`` holds (or the timeout), then any stragglers for 1 s."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=f"check-{uuid.uuid4().hex[:6]}")
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while not enough(records) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        for batch in consumer.poll(timeout_ms=1000).values():
            records.extend(batch)
    finally:
        consumer.close()
    return records


@pytest.fixture(scope="module")
def snapshots(run: dict[str, Any]) -> list[dict[str, Any]]:
    # How many simulated campaign snapshots one format gives, from the same core run offline.
    cfg = config_mod.from_dict({**run["config"], "topics": {}})
    plan = Plan(cfg)
    events = [(plan.source_of(t), i, t, e["ts"], {k: v for k, v in e.items() if k not in ("type", "ts")})
              for i, (t, e) in enumerate(_simulated())]
    per_format = sum(1 for s in run_all(plan, events) if s.dims and s.dims[0] == "campaign")
    fixture_hours = {(f, c) for f in TRACKERS for c in orjson.loads((FIXTURES / "expected.json").read_bytes())[f]}

    def enough(records: list[Any]) -> bool:
        snaps = [orjson.loads(r.value) for r in records]
        sim = [s for s in snaps if s["breakdown"].startswith("campaign") and s["group"]["campaign"].startswith("sim-")]
        hours = {(s["group"]["tracker"], s["group"]["campaign"]) for s in snaps
                 if s["breakdown"] == "tracker,campaign" and s["window"] == "1h" and s["phase"] == "sessions"}
        return len(sim) >= per_format * len(FORMATS) and fixture_hours <= hours

    records = _consume(run["bootstrap"], run["config"]["topics"]["snapshots"], enough)
    snaps = [orjson.loads(r.value) for r in records]
    assert per_format > 0
    return snaps


def _view(snap: dict[str, Any]) -> tuple[Any, ...]:
    return snap["measures"], snap["kpis"], snap["provisional"]


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Equal, but for the last bits of sums: the same clicks' costs, added in another order.

    The formats' events interleave differently across partitions and batches, and float
    addition is not associative (29.080000000000005 vs 29.08). Counts must be equal exactly.
    """
    for x, y in zip(a, b):
        if x.keys() != y.keys():
            return False
        for k in x:
            if (x[k] is None) != (y[k] is None) or (x[k] is not None and x[k] != pytest.approx(y[k], rel=1e-12)):
                return False
    return True


def _diff(a: tuple[Any, ...], b: tuple[Any, ...]) -> dict[str, Any]:
    return {k: (x.get(k), y.get(k)) for x, y in zip(a, b) for k in {*x, *y} if x.get(k) != y.get(k)}


def test_the_same_traffic_in_every_format_gives_identical_snapshots(snapshots: list[dict[str, Any]]) -> None:
    by_format: dict[str, dict[tuple[Any, ...], Any]] = {f: {} for f in FORMATS}
    for s in snapshots:
        campaign = s["group"].get("campaign", "")
        if not s["breakdown"].startswith("campaign") or not campaign.startswith("sim-"):
            continue
        fmt, _, name = campaign.removeprefix("sim-").partition("-")
        key = (s["window"], s["start"], s["phase"], s["breakdown"], name, s["group"].get("device"), s["version"])
        assert key not in by_format[fmt], f"a snapshot published twice: {key}"
        by_format[fmt][key] = _view(s)
    baseline = by_format["kpimon"]
    sessions = sum(v[0].get("sessions", 0) for v in baseline.values())
    orders = sum(v[0].get("orders", 0) for v in baseline.values())
    leads = sum(v[0].get("leads", 0) + v[0].get("mqls", 0) for v in baseline.values())
    assert sessions > 100 and orders > 3 and leads > 3, (sessions, orders, leads)  # the traffic exercises every mapping
    for fmt in TRACKERS:
        assert by_format[fmt].keys() == baseline.keys(), fmt
        different = [k for k in baseline if not _same(by_format[fmt][k], baseline[k])]
        assert not different, (fmt, len(different), len(baseline), different[:3], [_diff(baseline[k], by_format[fmt][k]) for k in different[:3]])


EXPECTED_MEASURES = ("pageviews", "sessions", "bounced_sessions", "leads", "orders", "revenue", "new_customers", "clicks", "impressions")
EXPECTED_KPIS = ("bounce_rate", "session_to_order", "aov", "visitor_to_lead")


def _hour(snapshots: list[dict[str, Any]], breakdown: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The fixture hour's snapshots of a breakdown, measures and KPIs of both phases merged."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for s in snapshots:
        if s["breakdown"] == breakdown and s["window"] == "1h" and s["start"] == "2024-03-05T10:00:00Z" and s["version"] == 1:
            group = tuple(s["group"].values())
            merged = out.setdefault(group, {})
            merged.update(s["measures"])
            merged.update({k: v for k, v in s["kpis"].items()})
    return out


@pytest.mark.parametrize("fmt", TRACKERS)
def test_hand_written_fixtures_give_the_documented_kpis(snapshots: list[dict[str, Any]], fmt: str) -> None:
    expected = orjson.loads((FIXTURES / "expected.json").read_bytes())
    hour = _hour(snapshots, "tracker,campaign")
    assert sum(len(line.strip()) > 0 for line in (FIXTURES / f"{fmt}.jsonl").read_bytes().splitlines()) >= 1
    for campaign, want in expected[fmt].items():
        got = hour[(fmt, campaign)]
        for name in (*EXPECTED_MEASURES, *EXPECTED_KPIS):
            if name not in want:
                continue
            if want[name] is None:
                assert got.get(name) is None, (campaign, name)
            else:
                assert got.get(name, 0.0) == pytest.approx(want[name], rel=1e-9, abs=1e-12), (campaign, name, got)
    channels = _hour(snapshots, "tracker,channel")
    got_channels = {ch: v["sessions"] for (tracker, ch), v in channels.items() if tracker == fmt and v.get("sessions")}
    assert got_channels == expected["channels"][fmt]


def test_skipped_messages_are_counted_per_topic(run: dict[str, Any], snapshots: list[dict[str, Any]]) -> None:
    expected = orjson.loads((FIXTURES / "expected.json").read_bytes())["skipped"]
    ignored = {dict(k)["topic"]: v for k, v in run["worker"].samples("kpimon_messages_ignored_total").items()}
    assert ignored == {f"{run['prefix']}-{fmt}": float(n) for fmt, n in expected.items() if n}


def test_broken_messages_reach_dead_letters_naming_format_and_field(run: dict[str, Any], snapshots: list[dict[str, Any]]) -> None:
    bad = _bad()
    records = _consume(run["bootstrap"], run["config"]["topics"]["dead_letters"], lambda r: len(r) >= len(bad), timeout=30)
    got = [(dict(r.headers)["kpimon-source-topic"].decode(), orjson.loads(r.value) if r.value.startswith(b"{") else r.value,
            dict(r.headers)["kpimon-detail"].decode()) for r in records]
    assert len(got) == len(bad)
    for case in bad:
        topic = f"{run['prefix']}-{case['format']}"
        detail = next((d for t, v, d in got if t == topic and v == case["message"]), None)
        assert detail is not None, case
        assert detail.startswith(f"{case['format']} format, field {case['field']}: "), (detail, case["field"])
