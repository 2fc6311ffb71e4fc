"""Silences on the real broker: ``kpimon silence add/list/expire`` through the compacted topic,
``read_silences`` folding it exactly, and a worker's ``SilenceWatcher`` seeing changes live."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from typer.testing import CliRunner

from kpi_core.silences import Silence, UnknownSilence
from kpimon.silences import add_silence, ensure_topic, expire_silence, read_silences, silence_app
from streams.silences import SilenceWatcher
from tests.kpimon.test_silences import silences_config

HOUR = 3_600_000


@pytest.fixture
def topic(unique_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # The topic comes from ./kpimon.yaml here, the file the workers of this directory read.
    topic = f"{unique_prefix}-silences"
    silences_config(tmp_path, topic)
    monkeypatch.chdir(tmp_path)
    return topic


def _cli(bootstrap: str, topic: str, *args: str) -> str:
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "COLUMNS": "200"}  # wide: no wrapped cells
    result = CliRunner().invoke(silence_app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


def _json_list(bootstrap: str, topic: str, *args: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in _cli(bootstrap, topic, "list", "--json", *args).splitlines()]


def test_add_list_expire(kafka_bootstrap: str, topic: str) -> None:
    before = int(time.time() * 1000)
    out = _cli(
        kafka_bootstrap, topic,
        "add", "--campaign", "spring-*", "--kpi", "ctr", "--match", "device=mobile",
        "--for", "2h", "--reason", "landing page swap", "--by", "ana",
    )  # fmt: skip
    match = re.search(r"Added silence (\w+)", out)
    assert match, out
    first = match.group(1)
    second = re.search(r"Added silence (\w+)", _cli(kafka_bootstrap, topic, "add", "--channel", "email", "--for", "30m", "--reason", "send paused"))
    assert second
    other = second.group(1)

    listed = _cli(kafka_bootstrap, topic, "list")
    assert first in listed and other in listed
    assert all(m in listed for m in ("campaign=spring-*", "device=mobile", "kpi=ctr", "channel=email"))
    assert "landing page swap" in listed

    rows = {row["id"]: row for row in _json_list(kafka_bootstrap, topic)}
    assert rows[first]["matchers"] == {"campaign": "spring-*", "device": "mobile", "kpi": "ctr"}
    assert rows[first]["created_by"] == "ana" and rows[first]["state"] == "active"
    assert rows[first]["ends_at"] - rows[first]["starts_at"] == 2 * HOUR  # type: ignore[operator]
    assert before <= rows[first]["starts_at"] <= int(time.time() * 1000)  # type: ignore[operator]

    assert f"Expired silence {first}" in _cli(kafka_bootstrap, topic, "expire", first)
    listed = _cli(kafka_bootstrap, topic, "list")
    assert first not in listed and other in listed
    # expired, not deleted: --all still shows who muted what
    history = {row["id"]: row["state"] for row in _json_list(kafka_bootstrap, topic, "--all")}
    assert history == {first: "expired", other: "active"}
    # expiring again is harmless and says so
    assert "already expired" in _cli(kafka_bootstrap, topic, "expire", first)

    # read_silences folds the topic to exactly these two, the first one ended
    silences = read_silences(kafka_bootstrap, topic, timeout=10)
    assert {s.id for s in silences} == {first, other}
    now = int(time.time() * 1000)
    assert [s.id for s in silences.active(now)] == [other]
    assert silences.is_silenced({"channel": "email"}, "cpc", now) == silences.get(other)
    assert silences.is_silenced({"campaign": "spring-1", "device": "mobile"}, "ctr", now) is None

    # --purge deletes with a tombstone
    assert f"Deleted silence {other}" in _cli(kafka_bootstrap, topic, "expire", "--purge", other)
    assert {s.id for s in read_silences(kafka_bootstrap, topic)} == {first}
    assert "No active silences." in _cli(kafka_bootstrap, topic, "list")


def test_expire_unknown_id(kafka_bootstrap: str, topic: str) -> None:
    result = CliRunner().invoke(
        silence_app, ["expire", "nosuchid", "--config", "kpimon.yaml"], env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    )
    assert result.exit_code == 1
    assert "no silence with id 'nosuchid'" in result.output
    with pytest.raises(UnknownSilence):
        expire_silence(kafka_bootstrap, topic, "nosuchid")


def test_missing_topic_reads_as_empty(kafka_bootstrap: str, topic: str) -> None:
    assert len(read_silences(kafka_bootstrap, topic)) == 0
    assert "No active silences." in _cli(kafka_bootstrap, topic, "list")


def test_topic_is_compacted_single_partition(kafka_bootstrap: str, topic: str) -> None:
    assert ensure_topic(kafka_bootstrap, topic) is True
    assert ensure_topic(kafka_bootstrap, topic) is False  # idempotent
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, ["cleanup.policy"])])
        assert configs["topic"][topic]["cleanup.policy"]["value"] == "compact"
        (desc,) = admin.describe_topics([topic])
        assert len(desc["partitions"]) == 1
    finally:
        admin.close()


def test_read_silences_skips_bad_records(kafka_bootstrap: str, topic: str) -> None:
    good = add_silence(kafka_bootstrap, topic, matchers={"campaign": "a"}, duration_ms=HOUR, reason="r", created_by="t")
    _produce_raw(kafka_bootstrap, topic, [(b"junk", b"{not json"), (b"x", good.to_bytes())])
    silences = read_silences(kafka_bootstrap, topic)
    assert silences.all() == [good]


def _produce_raw(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value).get(timeout=10)
    finally:
        producer.close()


async def _until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_watcher_follows_the_topic(kafka_bootstrap: str, topic: str) -> None:
    group = {"campaign": "spring"}

    async def scenario() -> None:
        # The topic doesn't exist yet: the watcher creates it and is ready at once (nothing to catch up on).
        watcher = SilenceWatcher(kafka_bootstrap, topic, retry_after=0.2)
        await watcher.start()
        try:
            await asyncio.wait_for(watcher.ready.wait(), 15)
            assert watcher.is_silenced(group, "ctr", int(time.time() * 1000)) is None

            # a garbage record is logged and skipped, the watcher keeps going
            await asyncio.to_thread(_produce_raw, kafka_bootstrap, topic, [(b"junk", b"\xff")])
            added = await asyncio.to_thread(
                add_silence, kafka_bootstrap, topic, matchers=group, duration_ms=HOUR, reason="launch", created_by="t"
            )
            await _until(lambda: watcher.is_silenced(group, "ctr", int(time.time() * 1000)) == added)
            assert watcher.rejected == 1
            assert watcher.is_silenced({"channel": "email"}, "ctr", int(time.time() * 1000)) is None

            await asyncio.to_thread(expire_silence, kafka_bootstrap, topic, added.id)
            await _until(lambda: watcher.is_silenced(group, "ctr", int(time.time() * 1000)) is None)
        finally:
            await watcher.stop()

        # A second watcher started later catches up with what is already there before it is ready.
        later = await asyncio.to_thread(
            add_silence, kafka_bootstrap, topic, matchers={"kpi": "roi"}, duration_ms=HOUR, reason="r", created_by="t"
        )
        async with SilenceWatcher(kafka_bootstrap, topic) as second:
            await asyncio.wait_for(second.ready.wait(), 15)
            assert {s.id for s in second.silences} == {added.id, later.id}
            assert second.is_silenced({}, "roi", int(time.time() * 1000)) == later

    asyncio.run(scenario())


def test_add_silence_returns_what_was_stored(kafka_bootstrap: str, topic: str) -> None:
    silence = add_silence(
        kafka_bootstrap, topic, matchers={"channel": "social"}, duration_ms=HOUR, reason=" budget cap ", created_by="bo", now=1_000
    )
    assert silence == Silence(
        id=silence.id, matchers={"channel": "social"}, starts_at=1_000, ends_at=1_000 + HOUR, reason="budget cap", created_by="bo"
    )
    assert read_silences(kafka_bootstrap, topic).get(silence.id) == silence
