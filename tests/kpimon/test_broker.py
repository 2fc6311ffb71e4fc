"""Tests for the local Kafka broker manager."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from typer.testing import CliRunner

from kpimon.broker import BOOTSTRAP_ENV, LocalBroker, bootstrap_servers, kafka_app


def test_bootstrap_servers_uses_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """An external cluster named in the environment wins over a local broker."""
    monkeypatch.setenv(BOOTSTRAP_ENV, "kafka-1:9092,kafka-2:9092")
    assert bootstrap_servers() == "kafka-1:9092,kafka-2:9092"


def test_bootstrap_servers_is_none_without_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the env var (or with it empty) a local broker is wanted."""
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    assert bootstrap_servers() is None
    monkeypatch.setenv(BOOTSTRAP_ENV, "")
    assert bootstrap_servers() is None


def test_cli_leaves_an_external_cluster_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kafka up` and `kafka down` start and stop nothing when the env var is set."""
    monkeypatch.setenv(BOOTSTRAP_ENV, "kafka-1:9092")
    for command in ("up", "down"):
        result = CliRunner().invoke(kafka_app, [command, "--port", "1"])
        assert result.exit_code == 0, result.output
        assert "external cluster at kafka-1:9092" in result.output


def test_status_of_a_broker_never_started(tmp_path: Path) -> None:
    """A broker without a pid file reports stopped, with its configured bootstrap."""
    broker = LocalBroker(tmp_path, port=29092, name="idle")
    state = broker.status()
    assert (state.running, state.pid, state.bootstrap) == (False, None, "127.0.0.1:29092")
    assert state.data_dir == tmp_path / ".cache" / "kafka" / "idle"
    assert broker.down() is False


@pytest.mark.integration
def test_broker_round_trips_a_message(kafka_bootstrap: str, unique_prefix: str) -> None:
    """A topic can be created, written and read back through a consumer group."""
    topic = f"{unique_prefix}-roundtrip"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        producer.send(topic, key=b"campaign-7", value=b'{"kpi":"ctr","value":0.042}').get(timeout=30)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{unique_prefix}-group",
        auto_offset_reset="earliest",
    )
    try:
        records = []
        deadline = time.monotonic() + 60
        while not records and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
    finally:
        consumer.close()

    assert [(r.key, r.value) for r in records] == [(b"campaign-7", b'{"kpi":"ctr","value":0.042}')]
