"""Tests for loading events files: JSON Lines and CSV parsing, errors, routing to topics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord

from kpi_core.config import Topics
from kpi_core.events import marker
from kpimon import producer as producer_mod
from kpimon.producer import InputFileError, ProduceError, last_event_time, message_key, produce_file, read_events, send_markers

TOPIC_FOR = {etype: topic for topic, etype in Topics().types().items()}

JSONL = (
    b'{"type":"impression","ts":1714564800000,"campaign":"spring","channel":"social","device":"mobile"}\n'
    b"\n"
    b'  {"type": "click", "ts": "2024-05-01T12:00:01+00:00", "campaign": "spring", "channel": "social", "cost": 0.5}\r\n'
    b'{"type":"order","ts":"yesterday","campaign":"spring","channel":"email","order_id":"o-1","revenue":-3}\n'
)

CSV = (
    "\ufefftype,ts,campaign,channel,cost,revenue,customer_id,new_customer,score,order_id,country\n"
    "click,1714564800000,spring,paid_search,0.75,,,,,,US\n"
    "order,2024-05-01T12:00:00Z,spring,email,,129,c-7,TRUE,,o-1,DE\n"
    "\n"
    'survey,1714564900000,spring,email,,,c-7,,9,,"Côte, d\'Ivoire"\n'
    "click,1714564800001,spring,paid_search,free,,,maybe,,,US\n"
)


def _write(tmp_path: Path, name: str, content: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson", ".json", ".JSONL"])
def test_read_jsonl(tmp_path: Path, suffix: str) -> None:
    """One object per line, blank lines skipped, values exactly as written."""
    assert list(read_events(_write(tmp_path, f"events{suffix}", JSONL))) == [
        {"type": "impression", "ts": 1714564800000, "campaign": "spring", "channel": "social", "device": "mobile"},
        {"type": "click", "ts": "2024-05-01T12:00:01+00:00", "campaign": "spring", "channel": "social", "cost": 0.5},
        {"type": "order", "ts": "yesterday", "campaign": "spring", "channel": "email", "order_id": "o-1", "revenue": -3},
    ]


def test_read_csv(tmp_path: Path) -> None:
    """Known numeric fields become numbers, new_customer a bool, digit ts an int; empty cells are absent."""
    assert list(read_events(_write(tmp_path, "events.csv", CSV))) == [
        {"type": "click", "ts": 1714564800000, "campaign": "spring", "channel": "paid_search", "cost": 0.75, "country": "US"},
        {
            "type": "order", "ts": "2024-05-01T12:00:00Z", "campaign": "spring", "channel": "email",
            "revenue": 129, "customer_id": "c-7", "new_customer": True, "order_id": "o-1", "country": "DE",
        },
        {"type": "survey", "ts": 1714564900000, "campaign": "spring", "channel": "email", "customer_id": "c-7", "score": 9, "country": "Côte, d'Ivoire"},
        # Values that do not look right stay strings, so the worker rejects them with a reason.
        {"type": "click", "ts": 1714564800001, "campaign": "spring", "channel": "paid_search", "cost": "free", "new_customer": "maybe", "country": "US"},
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", b'{"type":"click"}\n{"type": \n', r"bad\.jsonl:2: not valid JSON"),  # truncated line
        ("bad.jsonl", b'{"type":"click"}\n\n[1, 2]\n', r"bad\.jsonl:3: expected a JSON object, got an array"),
        ("bad.json", b"[\n", r"bad\.json:1: not valid JSON .*one JSON object"),  # a JSON array file, not JSON Lines
        ("bad.jsonl", b'{"a":"\xff"}\n', r"bad\.jsonl:1: not valid JSON"),  # not UTF-8
        ("bad.csv", b"type,ts\nclick,1\nclick,2,3\n", r"bad\.csv:3: expected 2 fields as in the header, got 3"),
        ("bad.csv", b"type,ts\nclick,1\nclick\n", r"bad\.csv:3: expected 2 fields as in the header, got 1"),
        ("bad.csv", b"type,ts\nclick,1\nclick,\xff\n", r"bad\.csv:3: not valid UTF-8"),
        ("events.txt", b"", r"events\.txt: unsupported file type '\.txt'"),
    ],
)
def test_bad_input_names_the_file_and_line(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    """Unreadable input raises InputFileError that says where and what."""
    with pytest.raises(InputFileError, match=message):
        list(read_events(_write(tmp_path, name, content)))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not there is named in the error."""
    with pytest.raises(InputFileError, match=r"nope\.jsonl: cannot read: No such file"):
        list(read_events(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize(
    ("obj", "key"),
    [
        ({"visitor_id": "v-1", "campaign": "spring"}, b"v-1"),  # a visitor's events stay together
        ({"campaign": "spring"}, b"spring"),
        ({"campaign": 7}, None),  # nothing usable: let Kafka spread the messages
    ],
)
def test_message_key(obj: dict[str, Any], key: bytes | None) -> None:
    """The key is the visitor, else the campaign, else none."""
    assert message_key(obj) == key


class FakeFuture:
    """Stands in for kafka-python's FutureRecordMetadata."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def add_errback(self, f: Any) -> None:
        if self.error is not None:
            f(self.error)


class FakeProducer:
    """Stands in for KafkaProducer: records sends, and can fail them or be interrupted."""

    instances: list[FakeProducer] = []
    fail: Exception | None = None  # every send fails with this
    interrupt_after: int | None = None  # Ctrl-C arrives after this many sends

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.sent: list[tuple[str, bytes, bytes | None, int | None]] = []
        self.flushed = self.closed = False
        FakeProducer.instances.append(self)

    def send(self, topic: str, *, value: bytes, key: bytes | None, timestamp_ms: int | None) -> FakeFuture:
        if self.interrupt_after is not None and len(self.sent) == self.interrupt_after:
            raise KeyboardInterrupt
        self.sent.append((topic, value, key, timestamp_ms))
        return FakeFuture(self.fail)

    def flush(self) -> None:
        self.flushed = True

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> type[FakeProducer]:
    """Replace KafkaProducer with FakeProducer."""
    monkeypatch.setattr(producer_mod, "KafkaProducer", FakeProducer)
    monkeypatch.setattr(FakeProducer, "instances", [])
    monkeypatch.setattr(FakeProducer, "fail", None)
    monkeypatch.setattr(FakeProducer, "interrupt_after", None)
    return FakeProducer


def create_topics(bootstrap: str, names: Iterable[str]) -> None:
    """Create single-partition topics (the test broker does not auto-create them)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1) for name in names])
    finally:
        admin.close()


def consume(bootstrap: str, topics: Iterable[str], count: int, group: str) -> list[ConsumerRecord]:
    """Read ``count`` records from the start of ``topics``, waiting up to a minute."""
    consumer = KafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest")
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + 60
    try:
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def test_produce_jsonl_sends_original_lines_with_event_time(tmp_path: Path, fake_kafka: type[FakeProducer]) -> None:
    """Each line goes, byte for byte, to its type's topic, stamped with its parsed ts."""
    counts = produce_file(_write(tmp_path, "e.jsonl", JSONL), bootstrap="localhost:1", topics=TOPIC_FOR)
    assert counts == {"ad-impressions": 1, "ad-clicks": 1, "orders": 1}
    lines = [line.rstrip(b"\r") for line in JSONL.split(b"\n") if line.strip()]
    producer = fake_kafka.instances[0]
    assert producer.sent == [
        ("ad-impressions", lines[0], b"spring", 1714564800000),
        ("ad-clicks", lines[1], b"spring", 1714564801000),
        ("orders", lines[2], b"spring", None),  # an unparsable ts: sent anyway, the worker dead-letters it
    ]
    assert producer.flushed and producer.closed and producer.config["acks"] == "all"


def test_produce_csv_sends_json(tmp_path: Path, fake_kafka: type[FakeProducer]) -> None:
    """CSV rows are sent as JSON objects of their parsed values."""
    counts = produce_file(_write(tmp_path, "e.csv", CSV), bootstrap="localhost:1", topics=TOPIC_FOR)
    assert counts == {"ad-clicks": 2, "orders": 1, "surveys": 1}
    sent = fake_kafka.instances[0].sent
    assert sent[0] == (
        "ad-clicks",
        b'{"type":"click","ts":1714564800000,"campaign":"spring","channel":"paid_search","cost":0.75,"country":"US"}',
        b"spring",
        1714564800000,
    )
    assert sent[1][3] == 1714564800000  # ISO with Z


def test_untyped_events_go_to_the_default_topic(tmp_path: Path, fake_kafka: type[FakeProducer]) -> None:
    """Events without a routable type go to default_topic, where the topic implies the type."""
    path = _write(tmp_path, "e.jsonl", b'{"ts":1714564800000,"campaign":"a","channel":"email"}\n{"type":"visit"}\n')
    counts = produce_file(path, bootstrap="localhost:1", topics=TOPIC_FOR, default_topic="ad-clicks")
    assert counts == {"ad-clicks": 2}


def test_unroutable_event_without_default_topic_sends_nothing(tmp_path: Path, fake_kafka: type[FakeProducer]) -> None:
    """The whole file is checked before the first send, so a fixed file can be re-sent without duplicates."""
    path = _write(tmp_path, "e.jsonl", b'{"type":"click"}\n{"type":"visit"}\n')
    with pytest.raises(InputFileError, match=r"e\.jsonl:2: no topic for type 'visit'"):
        produce_file(path, bootstrap="localhost:1", topics=TOPIC_FOR)
    assert fake_kafka.instances == []


def test_failed_delivery_is_reported(tmp_path: Path, fake_kafka: type[FakeProducer]) -> None:
    """Events Kafka did not take make produce_file fail, saying how many."""
    fake_kafka.fail = RuntimeError("broker gone")
    with pytest.raises(ProduceError, match="3 of 3 events .* not delivered: broker gone"):
        produce_file(_write(tmp_path, "e.jsonl", JSONL), bootstrap="localhost:1", topics=TOPIC_FOR)


@pytest.mark.integration
def test_produce_file_against_kafka(tmp_path: Path, kafka_bootstrap: str, unique_prefix: str) -> None:
    """Through a real broker: each line arrives unchanged on its topic, with its event time and key."""
    now = int(time.time() * 1000)
    lines = [
        b'{"type":"click","ts":%d,"campaign":"spring","channel":"social","cost":0.5}' % (now - 60_000),
        b'{"type":"pageview","ts":%d,"campaign":"spring","channel":"social","visitor_id":"v-1","session_id":"s-1","page":"/"}' % (now - 59_000),
        b'{"type":"click","ts":"not a time","campaign":"spring","channel":"social","cost":0.5}',
    ]
    topics = {"click": f"{unique_prefix}-clicks", "pageview": f"{unique_prefix}-views"}
    create_topics(kafka_bootstrap, topics.values())
    counts = produce_file(_write(tmp_path, "e.jsonl", b"\n".join(lines)), bootstrap=kafka_bootstrap, topics=topics)
    assert counts == {topics["click"]: 2, topics["pageview"]: 1}
    records = consume(kafka_bootstrap, topics.values(), 3, f"{unique_prefix}-g")
    got = sorted((r.topic, r.value, r.key) for r in records)
    assert got == sorted([(topics["click"], lines[0], b"spring"), (topics["pageview"], lines[1], b"v-1"), (topics["click"], lines[2], b"spring")])
    stamps = {r.value: r.timestamp for r in records}
    assert (stamps[lines[0]], stamps[lines[1]]) == (now - 60_000, now - 59_000)
    assert abs(stamps[lines[2]] - now) < 60_000  # no event time: the producer stamped it on sending


def test_progress_markers_go_to_every_partition_of_every_topic(tmp_path: Path, kafka_bootstrap: str, unique_prefix: str) -> None:
    names = [f"{unique_prefix}-m1", f"{unique_prefix}-m2"]
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1) for name in names])
    finally:
        admin.close()
    assert send_markers(kafka_bootstrap, names, 1_714_564_860_000) == 6
    records = consume(kafka_bootstrap, names, 6, f"{unique_prefix}-g")
    assert sorted((r.topic, r.partition) for r in records) == sorted((n, p) for n in names for p in range(3))
    assert {(r.value, tuple(r.headers)) for r in records} == {(b"", (("kpimon-watermark", b"1714564860000"),))}
    assert {marker(r.headers) for r in records} == {1_714_564_860_000}


def test_progress_markers_to_a_missing_topic_are_a_clear_error(kafka_bootstrap: str, unique_prefix: str) -> None:
    with pytest.raises(ProduceError, match=f"{unique_prefix}-nope does not exist"):
        send_markers(kafka_bootstrap, [f"{unique_prefix}-nope"], 1_714_564_860_000)


def test_last_event_time_is_the_largest_valid_ts(tmp_path: Path) -> None:
    path = _write(tmp_path, "e.jsonl", b'{"ts": 1714564800500}\n{"ts": "2024-05-01T12:00:02Z"}\n{"ts": "not a time"}\n{"ts": 1714564801000}')
    assert last_event_time(path) == 1_714_564_802_000
    assert last_event_time(_write(tmp_path, "none.jsonl", b'{"ts": "x"}')) is None


def test_produce_sends_tracker_messages_to_the_topic_of_their_format(tmp_path: Path, fake_kafka: type[FakeProducer]) -> None:
    """A file mixing kpimon events and GA4 request bodies: each line to its topic, as the worker reads them."""
    from kpi_core import config as config_mod
    from kpimon.cli import _tracker_times

    cfg = config_mod.from_dict({"measures": {"orders": {"event": "order"}}, "kpis": {"orders": {"measure": "orders"}},
                                "topics": {"sources": {"ad-clicks": "click", "ga4-mp": "ga4"}}})
    ga4 = (b'{"client_id": "c.1", "timestamp_micros": "1714564805000000", "events": '
           b'[{"name": "purchase", "params": {"transaction_id": "T1", "value": 20}}]}')
    click = b'{"type": "click", "ts": 1714564800000, "campaign": "spring", "channel": "email", "cost": 0.5}'
    path = _write(tmp_path, "mixed.jsonl", click + b"\n" + ga4 + b"\n")
    counts = produce_file(path, bootstrap="localhost:1", topics={"click": "ad-clicks"},
                          tracker_topic=cfg.topics.tracker_topic)
    assert counts == {"ad-clicks": 1, "ga4-mp": 1}
    assert [(topic, value) for topic, value, _, _ in fake_kafka.instances[0].sent] == [("ad-clicks", click), ("ga4-mp", ga4)]
    # --complete closes windows up to the last event time, a GA4 purchase's included.
    assert last_event_time(path) == 1714564800000
    assert last_event_time(path, _tracker_times(cfg)) == 1714564805000
