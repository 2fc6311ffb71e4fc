"""Target checks: which side of a target is bad, and the Breach records built from snapshots."""

from __future__ import annotations

import pytest

from kpi_core.results import Breach, Snapshot
from kpi_core.targets import breaches, is_breach

from .helpers import MIN, T, make_plan

IS_BREACH = [
    # higher is better and the value is below the target
    (0.01, 0.02, "higher", True),
    # higher is better and the value is above
    (0.03, 0.02, "higher", False),
    # equal to the target is fine (higher)
    (0.02, 0.02, "higher", False),
    # lower is better and the value is above
    (1.5, 1.0, "lower", True),
    # lower is better and the value is below
    (0.5, 1.0, "lower", False),
    # equal to the target is fine (lower)
    (1.0, 1.0, "lower", False),
    # a zero value against a zero target (higher) is not a breach
    (0.0, 0.0, "higher", False),
    # context KPIs (traffic shares) never breach, whatever the value
    (0.9, 0.1, "context", False),
    # ... on either side
    (0.0, 0.1, "context", False),
]


@pytest.mark.parametrize(("value", "target", "direction", "breach"), IS_BREACH)
def test_is_breach(value: float, target: float, direction: str, breach: bool) -> None:
    assert is_breach(value, target, direction) is breach


PLAN = make_plan(
    targets={
        "ctr": {"value": "2%", "overrides": {"campaign": {"brand-*": "5%"}}},
        "cpc": {"value": 1.0},
    }
)


def snapshot(group: dict[str, str], measures: dict[str, float], kpis: dict[str, float | None]) -> Snapshot:
    dims = tuple(group)
    return Snapshot("1m", T, T + MIN, dims, group, "events", measures, kpis)


def test_a_breach_carries_the_value_target_and_volume() -> None:
    snap = snapshot(
        {"campaign": "spring"},
        {"impressions": 200.0, "clicks": 2.0, "click_cost": 3.0, "orders": 0.0},
        {"ctr": 0.01, "cpc": 1.5},
    )
    assert breaches(PLAN, snap) == [
        Breach(
            kpi="ctr",
            value=0.01,
            target=0.02,
            direction="higher",
            unit="percent",
            numerator=2.0,
            denominator=200.0,
            numerator_name="clicks",
            denominator_name="impressions",
            window="1m",
            start=T,
            end=T + MIN,
            dims=("campaign",),
            group={"campaign": "spring"},
        ),
        Breach(
            kpi="cpc",
            value=1.5,
            target=1.0,
            direction="lower",
            unit="currency",
            numerator=3.0,
            denominator=2.0,
            numerator_name="click_cost",
            denominator_name="clicks",
            window="1m",
            start=T,
            end=T + MIN,
            dims=("campaign",),
            group={"campaign": "spring"},
        ),
    ]


def test_the_group_override_applies() -> None:
    measures = {"impressions": 100.0, "clicks": 4.0, "click_cost": 1.0, "orders": 0.0}
    # 4% misses the 5% target of brand-* campaigns ...
    assert [(b.kpi, b.target) for b in breaches(PLAN, snapshot({"campaign": "brand-q2"}, measures, {"ctr": 0.04, "cpc": 0.25}))] == [
        ("ctr", 0.05)
    ]
    # ... but meets the 2% default elsewhere
    assert breaches(PLAN, snapshot({"campaign": "spring"}, measures, {"ctr": 0.04, "cpc": 0.25})) == []


def test_a_missing_kpi_never_breaches() -> None:
    snap = snapshot({}, {"impressions": 0.0, "clicks": 0.0, "click_cost": 0.0, "orders": 0.0}, {"ctr": None, "cpc": None})
    assert breaches(PLAN, snap) == []


def test_a_kpi_without_a_target_never_breaches() -> None:
    plan = make_plan()
    snap = snapshot({}, {"impressions": 100.0, "clicks": 0.0, "click_cost": 0.0, "orders": 0.0}, {"ctr": 0.0, "cpc": None})
    assert breaches(plan, snap) == []


def test_breach_json_and_key() -> None:
    snap = snapshot({"campaign": "spring"}, {"impressions": 200.0, "clicks": 2.0, "click_cost": 1.0, "orders": 0.0}, {"ctr": 0.01, "cpc": 0.5})
    [breach] = breaches(PLAN, snap)
    assert breach.key == f"ctr|1m|{T}|campaign|spring"
    assert breach.to_json() == {
        "kpi": "ctr",
        "value": 0.01,
        "target": 0.02,
        "direction": "higher",
        "unit": "percent",
        "numerator": {"clicks": 2.0},
        "denominator": {"impressions": 200.0},
        "window": "1m",
        "start": "2024-05-01T12:00:00Z",
        "end": "2024-05-01T12:01:00Z",
        "breakdown": "campaign",
        "group": {"campaign": "spring"},
    }


def test_below_min_denominator_a_window_never_breaches() -> None:
    plan = make_plan(targets={"ctr": {"value": "2%", "min_denominator": 1000}})
    low = {"impressions": 999.0, "clicks": 0.0, "click_cost": 0.0, "orders": 0.0}
    assert breaches(plan, snapshot({}, low, {"ctr": 0.0, "cpc": None})) == []
    enough = low | {"impressions": 1000.0}
    assert [(b.kpi, b.denominator) for b in breaches(plan, snapshot({}, enough, {"ctr": 0.0, "cpc": None}))] == [("ctr", 1000.0)]


def test_a_difference_kpi_breach_reports_its_volume() -> None:
    plan = make_plan(
        measures={"revenue": {"event": "order", "sum": "revenue"}, "cost": {"event": "spend", "sum": "amount"}},
        kpis={"roi": {"difference": ["revenue", "cost"], "over": "cost", "unit": "percent"}},
        targets={"roi": {"value": "10%"}},
    )
    [breach] = breaches(plan, snapshot({}, {"revenue": 900.0, "cost": 1000.0}, {"roi": -0.1}))
    assert (breach.value, breach.target) == (-0.1, 0.1)
    assert breach.to_json()["numerator"] == {"revenue − cost": -100.0}
    assert breach.to_json()["denominator"] == {"cost": 1000.0}


def test_a_context_kpi_with_a_target_never_breaches() -> None:
    plan = make_plan(
        measures={"sessions": {"event": "session"}, "organic": {"event": "session", "where": {"channel": "organic"}}},
        kpis={"organic_share": {"ratio": ["organic", "sessions"], "direction": "context"}},
        targets={"organic_share": {"value": "50%"}},
    )
    snap = Snapshot("1m", T, T + MIN, (), {}, "sessions", {"sessions": 10.0, "organic": 1.0}, {"organic_share": 0.1})
    assert breaches(plan, snap) == []
