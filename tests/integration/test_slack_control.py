"""Slack as a control surface, through the live worker, the local Slack API and its Socket Mode:
each button on a live incident, a click by someone not allowed, a click delivered twice and
again after a kill -9, the chart in each incident's thread, and the daily digest."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import matplotlib.image
import orjson
import pytest
from kafka import KafkaProducer

from tests.support.slack_api import SlackAPIServer
from tests.support.worker import ROOT, Worker, close_input, send_ctr_window, topic_names

pytestmark = pytest.mark.integration

T = 1_714_564_800_000  # 2024-05-01T12:00:00Z
W = 10_000  # 10 s windows
TOKEN = "xoxb-control-secret"
CHANNEL = "#kpi-alerts"
ANNA, BOB, EVE = "U0ANNA", "U0BOB", "U0EVE"  # allowed; in the allowed user group; neither


@pytest.fixture
def slack() -> Iterator[SlackAPIServer]:
    with SlackAPIServer(token=TOKEN) as server:
        server.usergroups["S0GROWTH"] = [BOB]
        yield server


def _config(prefix: str, **alerting: Any) -> dict[str, Any]:
    return {
        "windows": [{"size": "10s"}],
        "allowed_lateness": "1s",
        "idle_timeout": "2s",
        "breakdowns": [["campaign"]],
        "measures": {"clicks": {"event": "click"}, "impressions": {"event": "impression"}},
        "kpis": {"ctr": {"ratio": ["clicks", "impressions"], "direction": "higher", "unit": "percent"}},
        "targets": {"ctr": {"value": "5%", "min_denominator": 50}},
        "alerting": {"default_channel": CHANNEL, "slack": {"allowed_users": [ANNA], "allowed_groups": ["S0GROWTH"]}, **alerting},
        "topics": topic_names(prefix),
    }


def _env(slack: SlackAPIServer) -> dict[str, str]:
    return {"SLACK_BOT_TOKEN": TOKEN, "SLACK_APP_TOKEN": slack.app_token, "SLACK_CHANNEL": CHANNEL, "SLACK_API_URL": slack.base_url}


def _send(producer: KafkaProducer, prefix: str, campaign: str, w: int, clicks: int, t0: int = T) -> None:
    send_ctr_window(producer, prefix, campaign, t0 + w * W, clicks)


def _close_through(producer: KafkaProducer, prefix: str, ts: int) -> None:
    """Progress markers at ``ts`` on every source partition, to move event time on."""
    producer.flush()
    close_input(producer.config["bootstrap_servers"], prefix, ts, 2)


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _root(slack: SlackAPIServer, campaign: str) -> Any:
    found = [m for m in slack.channel_messages(CHANNEL) if f"campaign={campaign}" in m.text]
    assert len(found) <= 1, [m.text for m in found]
    return found[0] if found else None


def _current(message: Any) -> tuple[str, list[dict[str, Any]]]:
    """A message's text and blocks as they are now (after its edits)."""
    if message.edits:
        return message.edits[-1]["text"], message.edits[-1].get("blocks") or []
    return message.text, message.blocks or []


def _buttons(message: Any) -> list[str]:
    return [e["action_id"] for b in _current(message)[1] if b["type"] == "actions" for e in b["elements"]]


def _feedback(worker: Worker) -> dict[tuple[str, str], float]:
    """The feedback counters that are not 0 (every rule's verdicts start at 0)."""
    return {(dict(k)["rule"], dict(k)["verdict"]): v for k, v in worker.samples("kpimon_alert_feedback_total").items() if v}


def _silences(worker: Worker) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "kpimon.cli", "silence", "list", "--json", "--config", str(worker.config_path)],
                         env=worker.env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [orjson.loads(line) for line in out.splitlines()]


@pytest.mark.timeout(420)
def test_each_button_on_a_live_incident(kafka_bootstrap: str, slack: SlackAPIServer, tmp_path: Path) -> None:
    prefix = f"sc{uuid.uuid4().hex[:8]}"
    worker = Worker(_config(prefix), bootstrap=kafka_bootstrap, app_id=prefix, tmp=tmp_path, env=_env(slack)).start()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    campaigns = ("ack", "snooze", "silence", "false")
    try:
        slack.wait_connected(1, timeout=60)
        # Two healthy windows, then a breach: four incidents, one per campaign.
        for c in campaigns:
            for w, clicks in enumerate((8, 8, 4)):
                _send(producer, prefix, c, w, clicks)
        _close_through(producer, prefix, T + 3 * W + 2_000)
        roots = {c: _wait(lambda c=c: _root(slack, c), 60, f"{c}'s incident") for c in campaigns}
        for c in campaigns:
            assert _buttons(roots[c]) == ["kpimon_ack", "kpimon_snooze", "kpimon_silence", "kpimon_false_alarm"]

        # Each thread holds one PNG chart of the expected size.
        for c in campaigns:
            (chart,) = _wait(lambda c=c: slack.files(CHANNEL, thread_ts=roots[c].ts), 30, f"{c}'s chart")
            image = matplotlib.image.imread(io.BytesIO(chart.content), format="png")
            assert image.shape[:2] == (400, 800) and chart.name.endswith(".png")

        # The clicks: each acknowledged to Slack within 3 s.
        envelopes = {
            "ack": slack.click(CHANNEL, roots["ack"].ts, "kpimon_ack", user=ANNA),
            "snooze": slack.click(CHANNEL, roots["snooze"].ts, "kpimon_snooze", user=BOB),  # in the allowed user group
            "silence": slack.click(CHANNEL, roots["silence"].ts, "kpimon_silence", user=ANNA),
            "false": slack.click(CHANNEL, roots["false"].ts, "kpimon_false_alarm", user=ANNA),
            "eve": slack.click(CHANNEL, roots["ack"].ts, "kpimon_false_alarm", user=EVE),
        }
        for name, envelope in envelopes.items():
            assert slack.wait_ack(envelope, timeout=5) < 3, name
        _wait(lambda: all(_root(slack, c).edits for c in campaigns), 30, "the messages to show the clicks")
        text = {c: _current(_root(slack, c))[0] for c in campaigns}
        assert f"✔️ Acknowledged by <@{ANNA}>" in text["ack"]
        assert f"💤 Snoozed until recovered by <@{BOB}>" in text["snooze"]
        assert f"🔕 Silenced for 24 h by <@{ANNA}>" in text["silence"]
        assert f"🚫 Closed as a false alarm by <@{ANNA}>" in text["false"]
        assert _buttons(_root(slack, "ack")) == ["kpimon_snooze", "kpimon_silence", "kpimon_false_alarm"]
        assert _buttons(_root(slack, "false")) == []
        # Eve is told why, and nothing changed: no false alarm on "ack".
        (refusal,) = slack.ephemerals(CHANNEL)
        assert refusal["user"] == EVE and "not allowed" in refusal["text"] and "S0GROWTH" in refusal["text"]
        assert "Closed as a false alarm" not in text["ack"]
        # The silence is a normal one: `kpimon silence list` shows it.
        (listed,) = _wait(lambda: _silences(worker), 30, "the silence")
        assert (listed["matchers"], listed["created_by"], listed["state"]) == ({"campaign": "silence"}, f"slack:{ANNA}", "active")
        assert listed["ends_at"] - listed["starts_at"] == 24 * 3_600_000

        # Window 3 escalates every incident to critical; window 4 recovers.
        replies = {c: len(_root(slack, c).replies) for c in campaigns}
        edits = {c: len(_root(slack, c).edits) for c in campaigns}
        for c in campaigns:
            _send(producer, prefix, c, 3, 1)
        _close_through(producer, prefix, T + 4 * W + 2_000)
        _wait(lambda: len(_root(slack, "ack").replies) > replies["ack"], 60, "the acknowledged incident's update")
        time.sleep(3)
        # Acknowledged: still updated, and the update keeps showing who acknowledged it.
        assert "critical" in _current(_root(slack, "ack"))[0].lower() or "🔴" in _current(_root(slack, "ack"))[0]
        assert f"✔️ Acknowledged by <@{ANNA}>" in _current(_root(slack, "ack"))[0]
        # Snoozed, silenced, closed: no update, no reply.
        for c in ("snooze", "silence", "false"):
            assert (len(_root(slack, c).replies), len(_root(slack, c).edits)) == (replies[c], edits[c]), c
        for c in campaigns:
            _send(producer, prefix, c, 4, 8)
        _close_through(producer, prefix, T + 5 * W + 2_000)
        # The resolve still edits every message, the snoozed one too.
        _wait(lambda: all("RESOLVED" in _current(_root(slack, c))[0] for c in campaigns), 60, "the resolves")
        assert f"💤 Snoozed until recovered by <@{BOB}>" in _current(_root(slack, "snooze"))[0]

        # Feedback metrics: one per incident and verdict; precision 3 of 4 (one false alarm).
        want = {("target", "acknowledged"): 1, ("target", "snoozed"): 1, ("target", "silenced"): 1, ("target", "false_alarm"): 1}
        assert _wait(lambda: _feedback(worker) == want and _feedback(worker), 30, "the feedback metrics") == want
        assert worker.samples("kpimon_alert_precision") == {frozenset({("rule", "target")}): 0.75}

        # The same payload again: acknowledged, one effect.
        ack_text = _current(_root(slack, "ack"))[0]
        slack.redeliver(envelopes["false"])
        slack.redeliver(envelopes["silence"])
        slack.wait_ack(envelopes["false"], timeout=5)
        slack.wait_ack(envelopes["silence"], timeout=5)
        assert slack.acks(envelopes["false"]) == 2
        time.sleep(1)
        assert _feedback(worker) == want and len(_silences(worker)) == 1

        # And once more after a kill -9: still one effect.
        worker.kill()
        worker.start()
        slack.wait_connected(1, timeout=60)
        for name in ("false", "silence", "ack"):
            slack.redeliver(envelopes[name], timeout=30)
            slack.wait_ack(envelopes[name], timeout=10)
        time.sleep(1)
        assert _feedback(worker) == want and len(_silences(worker)) == 1
        assert worker.samples("kpimon_alert_precision") == {frozenset({("rule", "target")}): 0.75}
        assert ack_text.count("Acknowledged by") == _current(_root(slack, "ack"))[0].count("Acknowledged by") == 1
        assert len(slack.channel_messages(CHANNEL)) == 4  # nothing posted twice
    finally:
        producer.close()
        worker.stop()


@pytest.mark.timeout(300)
def test_the_daily_digest_is_posted_once_at_its_local_time(kafka_bootstrap: str, slack: SlackAPIServer, tmp_path: Path) -> None:
    # A zone where the digest's time (a minute from now) falls on today's date, not past midnight.
    zone = next(z for z in ("America/New_York", "Asia/Tokyo") if (datetime.now(ZoneInfo(z)) + timedelta(minutes=5)).date()
                == datetime.now(ZoneInfo(z)).date())
    now = datetime.now(ZoneInfo(zone))
    at = (now + timedelta(seconds=50)).replace(microsecond=0)
    yesterday = datetime.combine(now.date() - timedelta(days=1), datetime.min.time(), ZoneInfo(zone))
    t0 = int(yesterday.timestamp() * 1000)
    prefix = f"dg{uuid.uuid4().hex[:8]}"
    config = _config(prefix, digests=[{"at": at.strftime("%H:%M:%S"), "timezone": zone, "channel": "#daily"}],
                     routes=[{"match": {"campaign": "*"}, "channel": "#daily"}])
    config["windows"] = [{"size": "1h"}]
    worker = Worker(config, bootstrap=kafka_bootstrap, app_id=prefix, tmp=tmp_path, env=_env(slack)).start()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        # Yesterday, local time: alpha at 6% CTR all day, beta at 3% (below the 5% target).
        hours = int((datetime.combine(now.date(), datetime.min.time(), ZoneInfo(zone)).timestamp() * 1000 - t0) // 3_600_000)
        for h in range(hours):
            _send(producer, prefix, "alpha", h * 360, 6, t0=t0)
            _send(producer, prefix, "beta", h * 360, 3, t0=t0)
        _close_through(producer, prefix, t0 + hours * 3_600_000 + 2_000)
        digest = _wait(lambda: [m for m in slack.channel_messages("#daily") if "KPI digest" in m.text], 150, "the digest")
        posted = datetime.now(ZoneInfo(zone))
        assert posted >= at and (posted - at).total_seconds() < 30
        (message,) = digest
        assert message.text.startswith(f"KPI digest · {yesterday.date().isoformat()} ({zone})")
        assert "*campaign=alpha* · ctr 6.00%" in message.text
        assert "*campaign=beta* · ctr 3.00% ⚠️ (target 5.00%)" in message.text
        assert "Incidents: 1 opened, 0 resolved" in message.text
        (chart,) = _wait(lambda: slack.files("#daily", thread_ts=message.ts), 30, "the digest's chart")
        assert matplotlib.image.imread(io.BytesIO(chart.content), format="png").shape[:2] == (400, 800)
        # A restart does not post it again.
        worker.kill()
        worker.start()
        _wait(lambda: worker.samples("kpimon_digests_total"), 60, "the restarted worker to check the digest")
        assert worker.samples("kpimon_digests_total") == {frozenset({("outcome", "found")}): 1.0}
        assert len([m for m in slack.channel_messages("#daily") if "KPI digest" in m.text]) == 1
        assert len(slack.files("#daily", thread_ts=message.ts)) == 1
    finally:
        producer.close()
        worker.stop()
