"""Seasonal baselines (kpi_core/baseline.py): the rhythm learned, the warm-up, daylight saving,
robustness to outliers, and how unusual a value is."""

from __future__ import annotations

import math
import random
from zoneinfo import ZoneInfo

import pytest

from kpi_core import config
from kpi_core.alerting import AlertEngine
from kpi_core.baseline import Expectation, Seasonal, local_hour_and_day
from kpi_core.plan import Plan
from kpi_core.results import Snapshot

HOUR = 3_600_000
MONDAY = 1_704_067_200_000  # 2024-01-01T00:00:00Z
UTC = ZoneInfo("UTC")


def cpc(hour: int, day: int) -> float:
    """0.50 with a ±40% daily cycle peaking at 10:00 and weekends 20% cheaper."""
    return 0.5 * math.exp(math.log(1.4) * math.cos(2 * math.pi * (hour - 10) / 24)) * (0.8 if day >= 5 else 1.0)


def learned(days: int, *, noise: float = 0.0, tz: ZoneInfo = UTC, start: int = MONDAY, seed: int = 1) -> Seasonal:
    rng, model = random.Random(seed), Seasonal()
    for h in range(days * 24):
        t = start + h * HOUR
        hour, day = local_hour_and_day(t, tz)
        model.learn(t, hour, day, cpc(hour, day) * math.exp(rng.gauss(0, noise)))
    return model


def test_the_daily_and_weekly_rhythm_is_learned_not_declared() -> None:
    model = learned(21)
    for hour, day in [(10, 1), (22, 1), (4, 3), (10, 5), (16, 6)]:
        e = model.expect(hour, day, warmup=72)
        assert e is not None and e.centre == pytest.approx(cpc(hour, day), rel=0.03), (hour, day)
    # A trailing 24-hour mean would expect the same at 10:00 and at 22:00; the peak is 1.96x the trough.
    assert model.expect(10, 1, warmup=72).centre / model.expect(22, 1, warmup=72).centre == pytest.approx(1.96, rel=0.03)


def test_noise_gives_a_spread_and_a_range_that_covers_it() -> None:
    model = learned(28, noise=0.1)
    e = model.expect(10, 2, warmup=72)
    assert e is not None and e.sd == pytest.approx(0.1, rel=0.3)
    lo, hi = e.range(0.99)
    assert lo < cpc(10, 2) < hi and hi / lo == pytest.approx(math.exp(2 * 2.5758 * e.sd), rel=1e-4)


def test_no_expectation_while_warming_up_or_for_an_hour_or_day_not_seen() -> None:
    assert Seasonal().expect(10, 0, warmup=1) is None  # an empty baseline never alerts
    model = learned(2)  # 48 windows, Monday and Tuesday
    assert model.expect(10, 1, warmup=72) is None
    assert model.expect(10, 1, warmup=24) is not None
    assert model.expect(10, 5, warmup=24) is None  # no Saturday yet


def test_one_outlier_barely_moves_the_baseline() -> None:
    model = learned(14, noise=0.05)
    before = model.expect(10, 0, warmup=72)
    t = MONDAY + 14 * 24 * HOUR + 10 * HOUR  # Monday 10:00 of week 3
    model.learn(t, 10, 0, cpc(10, 0) * 10)
    after = model.expect(10, 0, warmup=72)
    assert before is not None and after is not None
    assert after.centre / before.centre < 1.1 and after.sd / before.sd < 1.3
    model.learn(t, 10, 0, cpc(10, 0) * 100)  # the same window again: learned once
    assert model.expect(10, 0, warmup=72).centre == after.centre


def test_hours_are_local_so_a_daylight_saving_change_keeps_the_rhythm() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert local_hour_and_day(1_711_846_800_000, berlin) == (3, 6)  # 2024-03-31T01:00Z is 03:00 CEST, a Sunday
    assert local_hour_and_day(1_711_843_200_000, berlin) == (1, 6)  # an hour earlier, 01:00 CET
    # Three weeks of a cycle in Berlin time across the switch to summer time: still aligned after it.
    start = 1_711_843_200_000 - 14 * 24 * HOUR
    model = learned(21, tz=berlin, start=start)
    e = model.expect(10, 2, warmup=72)
    assert e is not None and e.centre == pytest.approx(cpc(10, 2), rel=0.03)


def test_how_unusual_a_value_is() -> None:
    e = Expectation(centre=0.25, sd=0.1, hour=9, day=1)
    assert e.z(0.25 * math.exp(0.3)) == pytest.approx(3.0)
    assert Expectation.p_value(3.0) == pytest.approx(0.0013499, rel=1e-4)
    assert e.range(0.95) == pytest.approx((0.25 * math.exp(-0.195996), 0.25 * math.exp(0.195996)), rel=1e-5)


def _engine(**drift: object) -> tuple[Plan, AlertEngine]:
    plan = Plan(config.from_dict({
        "windows": [{"size": "1h"}], "breakdowns": [["campaign"]],
        "measures": {"clicks": {"event": "click"}, "click_cost": {"event": "click", "sum": "cost"}},
        "kpis": {"cpc": {"ratio": ["click_cost", "clicks"], "direction": "lower", "unit": "currency"}},
        "targets": {"cpc": {"drift": drift}},
    }))
    return plan, AlertEngine(plan)


def _window(plan: Plan, start: int, value: float) -> list[Snapshot]:
    measures = {"clicks": 1000.0, "click_cost": 1000.0 * value}
    return [Snapshot("1h", start, start + HOUR, ("campaign",), {"campaign": "a"}, "events", measures, plan.kpi_values(measures, "events"))]


def test_a_spike_alerts_in_its_own_hour_with_its_expected_range_and_p_value() -> None:
    plan, engine = _engine()
    for h in range(14 * 24):
        t = MONDAY + h * HOUR
        assert engine.evaluate(0, t, "events", _window(plan, t, cpc(*local_hour_and_day(t, UTC)))) == []
    t = MONDAY + 14 * 24 * HOUR + 3 * HOUR  # Monday 03:00: the trough, where 3x is still under the daily peak
    (event,) = engine.evaluate(0, t, "events", _window(plan, t, 3 * cpc(3, 0)))
    (f,) = event.findings
    assert (event.kind, f.rule, f.when) == ("opened", "drift", "03:00 on Mondays")
    assert f.baseline == pytest.approx(cpc(3, 0), rel=0.03)
    assert f.expected[0] < cpc(3, 0) < f.expected[1] < 3 * cpc(3, 0)
    assert f.z > 3.9 and f.p_value < 1e-4 and f.threshold == pytest.approx(f.expected[1])
    # Back to normal at 04:00, and the usual peak at 10:00 (1.5x the day's mean) is no drift.
    for h in range(4, 11):
        t = MONDAY + 14 * 24 * HOUR + h * HOUR
        events = engine.evaluate(0, t, "events", _window(plan, t, cpc(h, 0)))
        assert [e.kind for e in events] == (["resolved"] if h == 4 else []), h


def test_the_baseline_survives_a_restart() -> None:
    plan, engine = _engine()
    for h in range(10 * 24):
        t = MONDAY + h * HOUR
        engine.evaluate(0, t, "events", _window(plan, t, cpc(*local_hour_and_day(t, UTC))))
    restored = AlertEngine(plan)
    for key, value in engine.changes():
        restored.load(key, value)
    snap = _window(plan, MONDAY + 240 * HOUR, 0.5)[0]
    assert restored.expected_range("cpc", snap) == engine.expected_range("cpc", snap) is not None


def test_the_config_names_a_bad_time_zone() -> None:
    with pytest.raises(Exception, match=r"alerting\.timezone.*unknown time zone 'Mars/Olympus'"):
        config.from_dict({"alerting": {"timezone": "Mars/Olympus"}})
