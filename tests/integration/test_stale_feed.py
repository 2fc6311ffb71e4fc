"""The spend feed stops for two hours of event time while clicks go on, on the real broker and
worker: one stale-feed alert, the hours without spend held provisional (no alert evaluated on them),
and the alert resolved when the feed resumes."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from kpi_core.results import iso
from tests.support import truth
from tests.support.worker import Worker, topic_names

pytestmark = pytest.mark.integration

T = truth.T  # 2024-05-01T12:00:00Z
MIN, HOUR = 60_000, 3_600_000


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
            "revenue": {"event": "order", "sum": "revenue"},
        },
        "kpis": {"cpc": {"ratio": ["click_cost", "clicks"]}, "roas": {"ratio": ["revenue", "cost"]}},
        # With spend ROAS is 250 / 148 = 1.7 (below target); without it 250 / 48 = 5.2 (above):
        # an hour judged without its spend would resolve the incident falsely.
        "targets": {"roas": {"value": 3}},
        # Hourly reports: the latest is at most 90 minutes behind the clicks when all is well.
        "arrival": {"spend": {"delay": "90m"}},
        "topics": topic_names(prefix) | {"partitions": 2},
    }


def _fast(first_min: int, last_min: int) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for m in range(first_min, last_min):
        ts = T + m * MIN
        out += [("click", {"type": "click", "ts": ts + 10_000 + i, "campaign": "alpha", "channel": "search", "cost": 0.4}) for i in range(2)]
        if m % 12 == 6:
            out.append(("order", {"type": "order", "ts": ts + 20_000, "campaign": "alpha", "channel": "search", "order_id": f"o{m}",
                                  "revenue": 50.0, "customer_id": f"c{m}", "new_customer": False}))
    return out


def _report(hour: int) -> tuple[str, dict[str, Any]]:
    return ("spend", {"type": "spend", "ts": T + hour * HOUR, "campaign": "alpha", "channel": "search", "amount": 100.0})


@pytest.mark.timeout(600)
def test_a_stalled_spend_feed_alerts_once_holds_its_kpis_and_resolves(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = f"stale{uuid.uuid4().hex[:6]}"
    worker = Worker(_config(prefix), bootstrap=kafka_bootstrap, app_id=prefix, tmp=tmp_path).start()
    alerts = truth.Growing(kafka_bootstrap, f"{prefix}-kpi-alerts")
    snaps = truth.Growing(kafka_bootstrap, f"{prefix}-kpi-snapshots")

    def thread(name: str) -> list[tuple[int, str]]:
        return [(a["seq"], a["kind"]) for a in alerts.seen if a["thread"] == name]

    def final_or_held(s: list[dict[str, Any]], hour: int) -> dict[str, Any] | None:
        return next((x for x in s if x["start"] == iso(T + hour * HOUR) and x["version"] == 2), None)

    try:
        # Spend reported for 12:00 and 13:00, then nothing; clicks and orders go on to 15:00. (The
        # reports first: topics are read side by side, and clicks read before them would let the
        # delay run out on 12:00 before its report is in.)
        truth.send_by_campaign(kafka_bootstrap, prefix, [_report(0), _report(1)])
        worker.wait_count("kpimon_events_total", {"type": "spend"}, 2)  # routed ahead of any click
        truth.send_by_campaign(kafka_bootstrap, prefix, _fast(0, 180))
        alerts.until(lambda s: thread("feed|spend") == [(1, "opened")], 120)
        # 12:00 is final (the 13:00 report says spend passed it) and opens the ROAS incident.
        seen = snaps.until(lambda s: final_or_held(s, 0) is not None, 60)
        assert final_or_held(seen, 0)["kpis"]["roas"] == pytest.approx(250 / 148)
        # Clicks go on to 17:05 while spend stays silent: 13:00 and 14:00 wait out their delay.
        truth.send_by_campaign(kafka_bootstrap, prefix, _fast(180, 305))
        snaps.until(lambda s: all(final_or_held(s, h) for h in (1, 2)), 120)
        # Then the platform catches up with the 14:00, 15:00 and 16:00 reports.
        truth.send_by_campaign(kafka_bootstrap, prefix, [_report(2), _report(3), _report(4)])
        alerts.until(lambda s: thread("feed|spend") == [(1, "opened"), (2, "resolved")], 120)
        # ...and the 17:00 one, then clicks to 18:10: 15:00 and 16:00 are final with their spend.
        # (The report first: topics are read side by side, and clicks read far ahead of a report
        # due long ago would rightly make the feed stale again.)
        truth.send_by_campaign(kafka_bootstrap, prefix, [_report(5)])
        worker.wait_count("kpimon_events_total", {"type": "spend"}, 6)
        truth.send_by_campaign(kafka_bootstrap, prefix, _fast(305, 370))
        seen = snaps.until(lambda s: final_or_held(s, 4) is not None, 120)
        time.sleep(3)
        alerts.until(lambda s: True, 5)

        # 13:00 and 14:00 waited out their delay without spend: ROAS held provisional, never judged.
        for h in (1, 2):
            held = final_or_held(seen, h)
            assert (sorted(held["provisional"]), held["waiting_for"], "roas" in held["kpis"]) == (["roas"], ["spend"], False), h
            assert held["kpis"]["cpc"] == pytest.approx(0.4)
        for h in (3, 4):
            assert final_or_held(seen, h)["kpis"]["roas"] == pytest.approx(250 / 148), h
        # The 14:00 report came after its hour was published: late (this feed declares no revise_for).
        assert truth.count(kafka_bootstrap, f"{prefix}-late-events") == 1
        # One stale-feed thread, opened and resolved once; the ROAS incident opened once and was
        # never resolved by an hour without its spend.
        assert thread("feed|spend") == [(1, "opened"), (2, "resolved")]
        assert [(a["kind"], a["start"]) for a in alerts.seen if a["thread"] == "1h|campaign|alpha"] == [("opened", T)]
        stale = next(a for a in alerts.seen if a["thread"] == "feed|spend")
        assert stale["findings"][0]["rule"] == "stale" and stale["start"] == T + HOUR
    finally:
        alerts.close()
        snaps.close()
        worker.stop()
