"""Alerts through the live worker to a local Slack Web API server: one message per incident,
edited to resolved with updates in its thread, silences respected, and a 60-second Slack outage
(503s and 429s) that ends with every alert delivered exactly once."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from tests.support.slack_api import SlackAPIServer
from tests.support.worker import ROOT, Worker, close_input, send_ctr_window, topic_names

T = 1_714_564_800_000  # 2024-05-01T12:00:00Z
W = 10_000  # 10 s windows
TOKEN = "xoxb-live-alerts-secret"


def _config(prefix: str) -> dict[str, Any]:
    return {
        "windows": [{"size": "10s"}],
        "allowed_lateness": "1s",
        "idle_timeout": "2s",
        "breakdowns": [["campaign"]],
        "measures": {"clicks": {"event": "click"}, "impressions": {"event": "impression"}},
        "kpis": {"ctr": {"ratio": ["clicks", "impressions"], "direction": "higher", "unit": "percent"}},
        "targets": {"ctr": {"value": "5%", "min_denominator": 50}},
        "alerting": {"default_channel": "#kpi-alerts", "grafana_url": "http://grafana.local/d/kpimon"},
        "topics": topic_names(prefix),
    }


def _window(producer: KafkaProducer, prefix: str, campaign: str, w: int, clicks: int, imps: int = 100) -> None:
    send_ctr_window(producer, prefix, campaign, T + w * W, clicks, imps)


def _close_through(producer: KafkaProducer, prefix: str, w: int) -> None:
    """Progress markers past window w (plus lateness) on every source partition, to move event time on."""
    producer.flush()
    close_input(producer.config["bootstrap_servers"], prefix, T + (w + 1) * W + 2_000, 2)


@pytest.fixture
def slack() -> Iterator[SlackAPIServer]:
    with SlackAPIServer(token=TOKEN) as server:
        yield server


def _start(kafka_bootstrap: str, slack: SlackAPIServer, tmp_path: Path) -> tuple[Worker, str]:
    prefix = f"al{uuid.uuid4().hex[:8]}"
    env = {"SLACK_BOT_TOKEN": TOKEN, "SLACK_CHANNEL": "#kpi-alerts", "SLACK_API_URL": slack.base_url}
    worker = Worker(_config(prefix), bootstrap=kafka_bootstrap, app_id=prefix, tmp=tmp_path, env=env)
    worker.start()
    return worker, prefix


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_incident_lifecycle_and_silence(kafka_bootstrap: str, slack: SlackAPIServer, tmp_path: Path) -> None:
    worker, prefix = _start(kafka_bootstrap, slack, tmp_path)
    try:
        silence = subprocess.run(
            [sys.executable, "-m", "kpimon.cli", "silence", "add", "--campaign", "quiet", "--for", "2h", "--reason", "planned test",
             "--config", str(worker.config_path)],
            env=worker.env, cwd=ROOT, capture_output=True, text=True,
        )
        assert silence.returncode == 0, silence.stdout + silence.stderr
        time.sleep(2)  # the worker's silence reader follows the topic
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for w, (loud, quiet) in enumerate([(8, 8), (4, 2), (1, 2), (8, 8)]):  # ok, warning, critical, recovered
            _window(producer, prefix, "loud", w, loud)
            _window(producer, prefix, "quiet", w, quiet)
        _close_through(producer, prefix, 3)
        _wait(lambda: any("RESOLVED" in m["text"] for m in slack.channel_messages("#kpi-alerts")), 60, "the resolve")
        time.sleep(2)
    finally:
        worker.stop()
    (root,) = slack.channel_messages("#kpi-alerts")  # one message for the one incident; "quiet" is silenced
    assert "campaign=loud" in root["text"] and "RESOLVED" in root["text"]
    assert "quiet" not in orjson.dumps(slack.requests_json()).decode()
    replies = [r["text"] for r in root["replies"] if not r.files]  # (the chart is a file share in the thread)
    assert len(replies) == 2, replies  # the escalation to critical, and the resolve
    assert "ritical" in replies[0] and "esolved" in replies[1]
    assert len(root["edits"]) == 2
    metadata = root["metadata"]["event_payload"]
    assert metadata["id"] == "10s|campaign|loud#1"
    assert TOKEN not in worker.log()


def test_a_60_second_slack_outage_loses_and_duplicates_nothing(kafka_bootstrap: str, slack: SlackAPIServer, tmp_path: Path) -> None:
    worker, prefix = _start(kafka_bootstrap, slack, tmp_path)
    try:
        slack.outage(60, statuses=(503, 429), retry_after=2)
        started = time.monotonic()
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        campaigns = [f"camp-{i}" for i in range(5)]
        for w, clicks in enumerate([8, 2, 8]):  # each campaign: breach in window 1, recovered in 2
            for c in campaigns:
                _window(producer, prefix, c, w, clicks)
        _close_through(producer, prefix, 2)
        _wait(lambda: sum("RESOLVED" in m["text"] for m in slack.channel_messages("#kpi-alerts")) == 5, 150, "every resolve")
        time.sleep(3)  # a duplicate would arrive now
    finally:
        worker.stop()
    assert time.monotonic() - started >= 60
    messages = slack.channel_messages("#kpi-alerts")
    assert sorted(m["metadata"]["event_payload"]["id"] for m in messages) == sorted(f"10s|campaign|{c}#1" for c in campaigns)
    texts = [[r.text for r in m.replies if not r.files] for m in messages]  # (each thread also holds its chart)
    assert all(len(t) == 1 and "esolved" in t[0] for t in texts), texts
    assert len(slack.failures) > 5  # the outage was felt, and retried through
