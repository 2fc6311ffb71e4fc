"""A revision withdraws an incident, on the real broker and worker with the local Slack Web API
server: the hour's final CPA (version 2) breaches its target and opens an incident; the ad
platform then restates the hour's spend (credits for invalid clicks), version 3 of the hour puts
CPA back within target, and the Slack message is edited to withdrawn with the reason in its thread:
one message, no second "opened"."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kpi_core.results import iso
from tests.support import truth
from tests.support.slack_api import SlackAPIServer
from tests.support.worker import Worker, close_input, topic_names

pytestmark = pytest.mark.integration

T = truth.T  # 2024-05-01T12:00:00Z
MIN, HOUR = 60_000, 3_600_000
TOKEN = "xoxb-revisions-secret"
FAST = ["ad-impressions", "ad-clicks", "page-views", "leads", "orders", "surveys"]
# Per hour: 120 clicks at 0.50 (click cost 60) and 6 orders.
CLICK_COST, ORDERS = 60.0, 6


def _config(prefix: str) -> dict[str, Any]:
    return {
        "windows": [{"size": "1h"}],
        "allowed_lateness": "10s",
        "idle_timeout": "2s",
        "breakdowns": [["campaign"]],
        "measures": {
            "clicks": {"event": "click"},
            "click_cost": {"event": "click", "sum": "cost"},
            "spend": {"event": "spend", "sum": "amount"},
            "cost": {"add": ["click_cost", "spend"]},
            "orders": {"event": "order"},
        },
        "kpis": {"cpc": {"ratio": ["click_cost", "clicks"], "direction": "lower", "unit": "currency"},
                 "cpa": {"ratio": ["cost", "orders"], "direction": "lower", "unit": "currency"}},
        "targets": {"cpa": {"value": 20}},
        "arrival": {f"{prefix}-ad-spend": {"delay": "6h", "revise_for": "72h",
                                           "restates": {"key": ["campaign"], "version": "report_version"}}},
        "alerting": {"default_channel": "#kpi-alerts"},
        "topics": topic_names(prefix),
    }


def _fast(minutes: int) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for m in range(minutes):
        ts = T + m * MIN
        out += [("click", {"type": "click", "ts": ts + 10_000 + i, "campaign": "alpha", "channel": "search", "cost": 0.5}) for i in range(2)]
        if m % 10 == 5:
            out.append(("order", {"type": "order", "ts": ts + 20_000, "campaign": "alpha", "channel": "search", "order_id": f"o{m}",
                                  "revenue": 50.0, "customer_id": f"c{m}", "new_customer": False}))
    return out


def _report(hour: int, amount: float, version: int) -> tuple[str, dict[str, Any]]:
    return ("spend", {"type": "spend", "ts": T + hour * HOUR, "campaign": "alpha", "channel": "search", "amount": amount,
                      "report_version": version})


@pytest.fixture
def slack() -> Iterator[SlackAPIServer]:
    with SlackAPIServer(token=TOKEN) as server:
        yield server


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.mark.timeout(600)
def test_a_restatement_withdraws_the_incident_it_opened_in_one_edited_slack_message(
        kafka_bootstrap: str, slack: SlackAPIServer, tmp_path: Path) -> None:
    prefix = f"rev{uuid.uuid4().hex[:6]}"
    env = {"SLACK_BOT_TOKEN": TOKEN, "SLACK_CHANNEL": "#kpi-alerts", "SLACK_API_URL": slack.base_url}
    worker = Worker(_config(prefix), bootstrap=kafka_bootstrap, app_id=prefix, tmp=tmp_path, env=env).start()
    snaps = truth.Growing(kafka_bootstrap, f"{prefix}-kpi-snapshots")

    def of(seen: list[dict[str, Any]], version: int) -> dict[str, Any] | None:
        return next((s for s in seen if s["start"] == iso(T) and s["version"] == version), None)

    try:
        # Clicks and orders 12:00-14:30, then the 12:00 report (100, high) and the 13:00 one, which
        # says spend has reported past 12:00: version 2 of 12:00 has CPA 160 / 6 = 26.67 > 20.
        truth.send_by_campaign(kafka_bootstrap, prefix, _fast(150))
        close_input(kafka_bootstrap, prefix, T + 150 * MIN, 2, topics=FAST)
        snaps.until(lambda s: of(s, 1) is not None, 120)
        truth.send_by_campaign(kafka_bootstrap, prefix, [_report(0, 100.0, 1)])
        time.sleep(1)
        truth.send_by_campaign(kafka_bootstrap, prefix, [_report(1, 10.0, 1)])
        v2 = of(snaps.until(lambda s: of(s, 2) is not None, 120), 2)
        assert v2["kpis"]["cpa"] == pytest.approx((CLICK_COST + 100) / ORDERS)
        _wait(lambda: len(slack.channel_messages("#kpi-alerts")) == 1, 60, "the incident's message")
        (root,) = slack.channel_messages("#kpi-alerts")
        assert "cpa" in root["text"] and "breaching" in root["text"]
        assert worker.wait_for("kpimon_kpi_value", {"kpi": "cpa", "window": "1h", "campaign": "alpha"}) == pytest.approx(160 / ORDERS)

        # The platform credits 60 of invalid clicks: the hour's spend is restated to 40.
        truth.send_by_campaign(kafka_bootstrap, prefix, [_report(0, 40.0, 2)])
        v3 = of(snaps.until(lambda s: of(s, 3) is not None, 120), 3)
        assert v3["key"] == v2["key"] and v3["measures"]["spend"] == 40.0
        assert v3["kpis"]["cpa"] == pytest.approx((CLICK_COST + 40) / ORDERS)
        assert v3["revised"] == {"spend": [100.0, 40.0], "cost": [160.0, 100.0]}
        _wait(lambda: any("WITHDRAWN" in m["text"] for m in slack.channel_messages("#kpi-alerts")), 60, "the withdrawal")
        _wait(lambda: worker.samples("kpimon_kpi_value").get(frozenset(
            {("kpi", "cpa"), ("window", "1h"), ("breakdown", "campaign"), ("campaign", "alpha")})) == pytest.approx(100 / ORDERS),
            30, "the gauge to show version 3")
        time.sleep(2)
    finally:
        snaps.close()
        worker.stop()

    (root,) = slack.channel_messages("#kpi-alerts")  # one message: edited, never a second "opened"
    assert "WITHDRAWN" in root["text"] and "campaign=alpha" in root["text"]
    assert len(root["edits"]) == 1
    (reply,) = [r["text"] for r in root["replies"] if not r.files]  # (the chart is a file share in the thread)
    assert reply.startswith("Withdrawn: the window's data was revised (version 3: cost 160 → 100, spend 100 → 40). ")
    assert "cpa withdrawn: revised to 16.67 (alerted on 26.67 above target 20.00)" in reply
    assert not any("Opened" in r["text"] for r in root["replies"])
    assert truth.count(kafka_bootstrap, f"{prefix}-late-events") == 0
    assert TOKEN not in worker.log()
