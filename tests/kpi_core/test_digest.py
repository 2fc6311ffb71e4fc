"""The daily digest: which day is due when, and what it says, from a replayed day of events."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kpi_core import config
from kpi_core.digest import build, day_range, due, posting_time
from kpi_core.incidents import AlertEvent
from kpi_core.pipeline import run_all
from kpi_core.plan import Plan
from kpi_core.results import Snapshot

NY = ZoneInfo("America/New_York")
DAY = date(2024, 3, 10)  # a DST change in New York: a 23-hour day
HOUR = 3_600_000

RAW: dict[str, Any] = {
    "windows": [{"size": "1h"}],
    "breakdowns": [["campaign"]],
    "measures": {
        "impressions": {"event": "impression"},
        "clicks": {"event": "click"},
        "click_cost": {"event": "click", "sum": "cost"},
        "visitors": {"event": "click", "distinct": "device"},
    },
    "kpis": {"ctr": {"ratio": ["clicks", "impressions"], "unit": "percent"},
             "cpc": {"ratio": ["click_cost", "clicks"], "direction": "lower", "unit": "currency"},
             "cost_per_visitor": {"ratio": ["click_cost", "visitors"], "direction": "lower"}},
    "targets": {"ctr": {"value": "2%"}, "cpc": {"value": 0.5}, "cost_per_visitor": {"value": 1}},
    "alerting": {"default_channel": "#growth", "routes": [{"match": {"campaign": "brand-*"}, "channel": "#brand"}],
                 "digests": [{"at": "09:00", "timezone": "America/New_York"}]},
}


def hours(day: date, n: int) -> list[int]:
    start, end = day_range(day, "America/New_York")
    assert (end - start) // HOUR == n
    return list(range(start, end, HOUR))


def events(day: date, campaign: str, impressions: int, clicks: int, cost: float) -> list[tuple[str, int, str, int, dict[str, Any]]]:
    out = []
    for h, t in enumerate(hours(day, 23 if day == DAY else 24)):
        out += [("ad-impressions:0", 0, "impression", t + i, {"campaign": campaign, "channel": "search"}) for i in range(impressions)]
        out += [("ad-clicks:0", 0, "click", t + 1000 + i, {"campaign": campaign, "channel": "search", "cost": cost,
                                                           "device": f"d{i}"}) for i in range(clicks)]
    return out


def test_the_digest_is_due_for_yesterday_once_the_local_time_has_passed() -> None:
    spec = config.Digest(at="09:00", timezone="America/New_York")
    at = posting_time(spec, DAY)
    assert datetime.fromtimestamp(at / 1000, NY).isoformat() == "2024-03-11T09:00:00-04:00"
    assert due(spec, at - 1) is None and due(spec, at) == DAY and due(spec, at + 14 * HOUR) == DAY
    with pytest.raises(ValueError, match="HH:MM"):
        config.Digest(at="9am")


def test_a_day_of_hourly_windows_sums_into_the_channels_kpis_movers_and_incidents() -> None:
    plan = Plan(config.from_dict(RAW))
    day_before = DAY.replace(day=9)
    stream = (events(day_before, "alpha", 10, 1, 0.5) + events(DAY, "alpha", 10, 2, 0.3)
              + events(DAY, "beta", 20, 1, 0.9) + events(DAY, "brand-x", 10, 5, 0.1))
    stream.sort(key=lambda e: e[3])
    stream = [(src, i, *rest) for i, (src, _, *rest) in enumerate(stream)]
    out = list(run_all(plan, stream, batch=500))
    snaps = [s.to_json() for s in out if isinstance(s, Snapshot)]
    alerts = [a.to_json() for a in out if isinstance(a, AlertEvent)]
    report = build(plan, plan.config.alerting.digests[0], DAY, snaps, alerts, fallback="#growth")

    assert (report.channel, report.id, report.kpis) == ("#growth", "digest|#growth|2024-03-10", ["ctr", "cpc"])  # no distinct counts
    rows = {r.group["campaign"]: r for r in report.rows}
    assert sorted(rows) == ["alpha", "beta"]  # brand-x is #brand's
    assert rows["alpha"].kpis == pytest.approx({"ctr": 46 / 230, "cpc": 0.3})
    assert rows["beta"].kpis == pytest.approx({"ctr": 23 / 460, "cpc": 0.9})
    assert (rows["alpha"].breaches, rows["beta"].breaches) == ([], ["cpc"])
    # alpha's CTR doubled (1/10 -> 2/10 per hour), its CPC fell 40%.
    assert [(m.group["campaign"], m.kpi, round(m.change, 6)) for m in report.movers] == [("alpha", "ctr", 1.0), ("alpha", "cpc", -0.4)]
    # beta's CPC breached from its first hour: one incident opened, in the day, in this channel.
    assert [(a["group"]["campaign"], a["start"]) for a in report.opened] == [("beta", day_range(DAY, "America/New_York")[0])]
    assert report.resolved == []
