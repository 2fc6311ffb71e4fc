"""The compiled plan: measure vectors, filters, groups, phases and KPI values."""

from __future__ import annotations

from typing import Any

import pytest

from kpi_core import config
from kpi_core.plan import EVENTS, SESSIONS, Plan

from .helpers import make_plan


def vector_after(plan: Plan, *events: tuple[str, dict[str, Any]]) -> list[float]:
    vector = [0.0] * plan.size
    for etype, data in events:
        plan.add(vector, etype, data)
    return vector


def test_measures_are_indexed_in_config_order() -> None:
    plan = make_plan()
    assert plan.measure_names == ["impressions", "clicks", "click_cost", "orders"]
    assert plan.size == 4


def test_add_counts_and_sums() -> None:
    plan = make_plan()
    vector = vector_after(
        plan,
        ("click", {"cost": 0.25}),
        ("click", {"cost": 1.5}),
        ("impression", {}),
        ("order", {"revenue": 9.0}),
    )
    assert dict(zip(plan.measure_names, vector)) == {"impressions": 1.0, "clicks": 2.0, "click_cost": 1.75, "orders": 1.0}


def test_add_reports_whether_any_measure_was_fed() -> None:
    plan = make_plan()
    vector = [0.0] * plan.size
    assert plan.add(vector, "click", {"cost": 2.0}) is True
    assert plan.add(vector, "survey", {"score": 3}) is False
    assert vector == [0.0, 1.0, 2.0, 0.0]


FILTERED_MEASURES = {
    "goal": {"event": "pageview", "where": {"page": "/thanks"}},
    "landing": {"event": "pageview", "where": {"page": {"in": ["/", "/lp"]}}},
    "docs": {"event": "pageview", "where": {"page": {"prefix": "/docs/"}}},
    "mqls": {"event": "lead", "where": {"stage": "mql"}},
    "new_revenue": {"event": "order", "sum": "revenue", "where": {"new_customer": True}},
}

FILTER_CASES = [
    # eq matches exactly
    ("pageview", {"page": "/thanks"}, {"goal": 1.0}),
    # eq does not match a longer path
    ("pageview", {"page": "/thanks/again"}, {}),
    # in: a member of the list
    ("pageview", {"page": "/lp"}, {"landing": 1.0}),
    # prefix matches a sub-path
    ("pageview", {"page": "/docs/setup"}, {"docs": 1.0}),
    # prefix does not match the bare prefix without its slash
    ("pageview", {"page": "/docs"}, {}),
    # a lead at another stage
    ("lead", {"stage": "sql"}, {}),
    # a lead at the mql stage
    ("lead", {"stage": "mql"}, {"mqls": 1.0}),
    # a boolean filter and a sum: revenue of a new customer
    ("order", {"revenue": 40.0, "new_customer": True}, {"new_revenue": 40.0}),
    # a returning customer's order is not summed
    ("order", {"revenue": 40.0, "new_customer": False}, {}),
]


@pytest.mark.parametrize(("etype", "data", "fed"), FILTER_CASES)
def test_filters(etype: str, data: dict[str, Any], fed: dict[str, float]) -> None:
    plan = make_plan(measures=FILTERED_MEASURES, kpis={})
    vector = vector_after(plan, (etype, data))
    assert {n: v for n, v in zip(plan.measure_names, vector) if v} == fed


def test_groups_per_breakdown_with_none_for_a_missing_attribute() -> None:
    plan = make_plan(breakdowns=[["campaign"], ["campaign", "channel"], ["utm_source"], []])
    assert plan.groups({"campaign": "spring", "channel": "email"}) == [
        (0, ("spring",)),
        (1, ("spring", "email")),
        (2, ("none",)),
        (3, ()),
    ]


def test_kpi_values_divide_and_a_zero_denominator_is_none() -> None:
    plan = make_plan()
    # impressions 0, clicks 3, cost 1.5
    assert plan.kpi_values([0.0, 3.0, 1.5, 0.0], EVENTS) == {"ctr": None, "cpc": 0.5}
    # impressions 4, clicks 0: ctr is 0, cpc missing
    assert plan.kpi_values([4.0, 0.0, 0.0, 0.0], EVENTS) == {"ctr": 0.0, "cpc": None}


def test_session_kpis_wait_for_the_sessions_phase() -> None:
    plan = Plan(config.load())
    assert [(k.name, k.phase) for k in plan.kpis] == [
        ("ctr", EVENTS),
        ("cpc", EVENTS),
        ("conversion_rate", EVENTS),
        ("bounce_rate", SESSIONS),
    ]
    assert plan.phases == (EVENTS, SESSIONS)
    assert plan.needs_sessions
    assert plan.delay(EVENTS) == 0
    assert plan.delay(SESSIONS) == 1_800_000
    vector = [10.0, 2.0, 1.0, 1.0, 4.0, 1.0]
    # the events phase shows neither the session measures nor bounce_rate
    assert plan.measures(vector, EVENTS) == {"impressions": 10.0, "clicks": 2.0, "click_cost": 1.0, "orders": 1.0}
    assert plan.kpi_values(vector, EVENTS) == {"ctr": 0.2, "cpc": 0.5, "conversion_rate": 0.5}
    # the sessions phase shows every measure and only the session KPI
    assert plan.measures(vector, SESSIONS)["bounced_sessions"] == 1.0
    assert plan.kpi_values(vector, SESSIONS) == {"bounce_rate": 0.25}


def test_a_plan_without_session_kpis_has_only_the_events_phase() -> None:
    plan = make_plan()
    assert plan.phases == (EVENTS,)
    assert not plan.needs_sessions


def test_disabled_kpis_are_not_computed() -> None:
    plan = make_plan(kpis={"ctr": {"ratio": ["clicks", "impressions"], "enabled": False}})
    assert plan.kpis == []
    assert plan.kpi_values([1.0, 1.0, 1.0, 1.0], EVENTS) == {}
