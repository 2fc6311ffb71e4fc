"""A real ad platform's spend report, on the real broker and worker: delivered 2 h (event time)
after its hour, restated three times with kill -9s between the restatements.

The hour's CTR comes out while the report is still missing (version 1, CPL/CPA/ROAS provisional);
version 2, after the report, has CPL, CPA and ROAS equal to the values computed from every event,
with the last restatement's spend."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from kpi_core.results import iso
from tests.support import truth
from tests.support.worker import Worker, close_input, topic_names

pytestmark = pytest.mark.integration

T = truth.T  # 2024-05-01T12:00:00Z
MIN, HOUR = 60_000, 3_600_000
CAMPAIGNS = ("alpha", "beta")
FAST = ["ad-impressions", "ad-clicks", "page-views", "leads", "orders", "surveys"]


def _config(prefix: str) -> dict[str, Any]:
    return {
        "windows": [{"size": "1h"}],
        "allowed_lateness": "10s",
        "idle_timeout": "2s",
        "breakdowns": [["campaign"]],
        "measures": {
            "impressions": {"event": "impression"},
            "clicks": {"event": "click"},
            "click_cost": {"event": "click", "sum": "cost"},
            "spend": {"event": "spend", "sum": "amount"},
            "cost": {"add": ["click_cost", "spend"]},
            "leads": {"event": "lead"},
            "orders": {"event": "order"},
            "revenue": {"event": "order", "sum": "revenue"},
        },
        "kpis": {
            "ctr": {"ratio": ["clicks", "impressions"]},
            "cpl": {"ratio": ["cost", "leads"], "direction": "lower"},
            "cpa": {"ratio": ["cost", "orders"], "direction": "lower"},
            "roas": {"ratio": ["revenue", "cost"]},
        },
        "arrival": {f"{prefix}-ad-spend": {"delay": "6h", "restates": {"key": ["campaign"], "version": "report_version"}}},
        "topics": topic_names(prefix) | {"partitions": 4},
    }


def _fast_events() -> list[tuple[str, dict[str, Any]]]:
    """12:00-14:30 in time order: per campaign and minute 20 impressions and 2 clicks (0.40 each);
    a lead every 6 minutes, an order of 50 every 12."""
    out = []
    for m in range(150):
        for c in CAMPAIGNS:
            ts = T + m * MIN
            out += [("impression", {"type": "impression", "ts": ts + i * 1000, "campaign": c, "channel": "search"}) for i in range(20)]
            out += [("click", {"type": "click", "ts": ts + 30_000 + i, "campaign": c, "channel": "search", "cost": 0.4}) for i in range(2)]
            if m % 6 == 3:
                out.append(("lead", {"type": "lead", "ts": ts + 40_000, "campaign": c, "channel": "search", "lead_id": f"{c}{m}", "stage": "lead"}))
            if m % 12 == 5:
                out.append(("order", {"type": "order", "ts": ts + 50_000, "campaign": c, "channel": "search", "order_id": f"{c}{m}",
                                      "revenue": 50.0, "customer_id": f"{c}{m}", "new_customer": True}))
    return out


def _report(campaign: str, amount: float, version: int) -> tuple[str, dict[str, Any]]:
    return ("spend", {"type": "spend", "ts": T, "campaign": campaign, "channel": "search", "amount": amount, "report_version": version})


def _of(seen: list[dict[str, Any]], start: int, version: int) -> dict[str, dict[str, Any]]:
    """One window's snapshots of one version, by campaign."""
    at = iso(start)
    return {s["group"]["campaign"]: s for s in seen if s["start"] == at and s["version"] == version}


@pytest.mark.timeout(600)
def test_a_spend_report_two_hours_late_and_restated_three_times_with_kills(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = f"spend{uuid.uuid4().hex[:6]}"
    fast = _fast_events()
    want: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))  # the first hour, from every event
    for etype, e in fast:
        if T <= e["ts"] < T + HOUR:
            m = want[e["campaign"]]
            m[{"impression": "impressions", "click": "clicks", "lead": "leads", "order": "orders"}[etype]] += 1
            m["click_cost"] += e.get("cost", 0.0)
            m["revenue"] += e.get("revenue", 0.0)
    last_spend = {"alpha": 96.0, "beta": 48.5}

    worker = Worker(_config(prefix), bootstrap=kafka_bootstrap, app_id=prefix, tmp=tmp_path).start()
    snaps = truth.Growing(kafka_bootstrap, f"{prefix}-kpi-snapshots")
    try:
        # Clicks, leads and orders up to 14:30; the fast streams say they have reached it.
        truth.send_by_campaign(kafka_bootstrap, prefix, fast)
        close_input(kafka_bootstrap, prefix, T + 150 * MIN, 4, topics=FAST)
        sent = time.monotonic()
        seen = snaps.until(lambda s: len(_of(s, T, 1)) == 2 and len(_of(s, T + HOUR, 1)) == 2, 120)
        v1 = _of(seen, T, 1)
        print(f"version 1 of 12:00 published {time.monotonic() - sent:.1f}s after the fast streams passed it")
        for c in CAMPAIGNS:
            w = want[c]
            assert v1[c]["kpis"] == {"ctr": w["clicks"] / w["impressions"]}
            assert v1[c]["waiting_for"] == ["spend"]
            assert v1[c]["provisional"]["cpa"] == pytest.approx(w["click_cost"] / w["orders"])
        assert _of(seen, T, 2) == {}  # nothing final without the report

        # 14:xx: the platform's report for 12:00 arrives, then is restated twice; the worker is
        # killed after the first report and after the first restatement.
        truth.send_by_campaign(kafka_bootstrap, prefix, [_report("alpha", 100.0, 1), _report("beta", 50.0, 1)])
        time.sleep(2)
        worker.kill()
        worker.start()
        truth.send_by_campaign(kafka_bootstrap, prefix, [_report("beta", 49.0, 2), _report("alpha", 98.0, 2)])
        time.sleep(2)
        worker.kill()
        worker.start()
        truth.send_by_campaign(kafka_bootstrap, prefix, [_report("alpha", 96.0, 3), _report("beta", 48.5, 3)])
        # Nothing says the hour's report is complete yet...
        time.sleep(3)
        assert _of(snaps.until(lambda s: True, 5), T, 2) == {}
        # ...until the connector says spend has reached 13:00.
        close_input(kafka_bootstrap, prefix, T + HOUR, 4, topics=["ad-spend"])
        seen = snaps.until(lambda s: len(_of(s, T, 2)) == 2, 120)
        v2 = _of(seen, T, 2)
        for c in CAMPAIGNS:
            w, spend = want[c], last_spend[c]
            cost = w["click_cost"] + spend
            assert v2[c]["key"] == v1[c]["key"]
            assert (v2[c]["provisional"], v2[c]["waiting_for"]) == ({}, [])
            assert v2[c]["measures"]["spend"] == spend
            assert v2[c]["kpis"] == pytest.approx({"ctr": w["clicks"] / w["impressions"], "cpl": cost / w["leads"],
                                                   "cpa": cost / w["orders"], "roas": w["revenue"] / cost})
        # Published once each (a repeat after a kill would carry the same values); 13:00 still waits.
        assert _of(seen, T + HOUR, 2) == {}
        assert truth.count(kafka_bootstrap, f"{prefix}-late-events") == 0
    finally:
        snaps.close()
        worker.stop()
