"""The compiled plan: measure vectors, filters, derived and distinct measures, groups, phases, KPI kinds."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kpi_core import config
from kpi_core.plan import EVENTS, SESSIONS, Plan

from .helpers import CLASSIC, make_plan


def vector_after(plan: Plan, *events: tuple[str, dict[str, Any]]) -> list[Any]:
    vector = plan.new_vector()
    for etype, data in events:
        plan.add(vector, etype, data)
    return vector


def test_slots_follow_config_order_and_derived_measures_take_none() -> None:
    plan = make_plan(
        measures={
            "clicks": {"event": "click"},
            "click_cost": {"event": "click", "sum": "cost"},
            "cost": {"add": ["click_cost", "spend"]},
            "spend": {"event": "spend", "sum": "amount"},
        },
        kpis={},
    )
    assert plan.slot_names == ["clicks", "click_cost", "spend"]
    assert plan.size == 3
    assert plan.derived == {"cost": ["click_cost", "spend"]}


def test_add_counts_and_sums() -> None:
    plan = make_plan()
    vector = vector_after(
        plan,
        ("click", {"cost": 0.25}),
        ("click", {"cost": 1.5}),
        ("impression", {}),
        ("order", {"revenue": 9.0}),
    )
    assert plan.measures(vector, EVENTS) == {"impressions": 1.0, "clicks": 2.0, "click_cost": 1.75, "orders": 1.0}


def test_add_reports_whether_any_measure_was_fed() -> None:
    plan = make_plan()
    vector = plan.new_vector()
    assert plan.add(vector, "click", {"cost": 2.0}) is True
    assert plan.add(vector, "survey", {"score": 3}) is False
    assert vector == [0.0, 1.0, 2.0, 0.0]


FILTERED_MEASURES = {
    "goal": {"event": "pageview", "where": {"page": "/thanks"}},
    "landing": {"event": "pageview", "where": {"page": {"in": ["/", "/lp"]}}},
    "docs": {"event": "pageview", "where": {"page": {"prefix": "/docs/"}}},
    "mqls": {"event": "lead", "where": {"stage": "mql"}},
    "new_revenue": {"event": "order", "sum": "revenue", "where": {"new_customer": True}},
    "promoters": {"event": "survey", "where": {"score": {"in": [9, 10]}}},
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
    # an integer "in" filter: a 9 is a promoter
    ("survey", {"score": 9}, {"promoters": 1.0}),
    # an 8 is not
    ("survey", {"score": 8}, {}),
]


@pytest.mark.parametrize(("etype", "data", "fed"), FILTER_CASES)
def test_filters(etype: str, data: dict[str, Any], fed: dict[str, float]) -> None:
    plan = make_plan(measures=FILTERED_MEASURES, kpis={})
    measures = plan.measures(vector_after(plan, (etype, data)), EVENTS)
    assert {n: v for n, v in measures.items() if v} == fed


def test_derived_measures_are_sums_of_their_parts() -> None:
    plan = make_plan(
        measures={
            "click_cost": {"event": "click", "sum": "cost"},
            "spend": {"event": "spend", "sum": "amount"},
            "cost": {"add": ["click_cost", "spend"]},
        },
        kpis={},
    )
    vector = vector_after(plan, ("click", {"cost": 0.5}), ("spend", {"amount": 100.0}), ("click", {"cost": 1.5}))
    assert plan.measures(vector, EVENTS) == {"click_cost": 2.0, "spend": 100.0, "cost": 102.0}


def test_distinct_counts_count_each_value_once_and_merge_as_a_union() -> None:
    plan = make_plan(measures={"visitors": {"event": "pageview", "distinct": "visitor_id"}}, kpis={})
    a = vector_after(plan, *[("pageview", {"visitor_id": v}) for v in ["v1", "v2", "v1", "v3"]])
    b = vector_after(plan, *[("pageview", {"visitor_id": v}) for v in ["v3", "v4"]])
    assert plan.measures(a, EVENTS) == {"visitors": 3.0}
    merged = plan.copy(a)
    plan.merge(merged, b)
    assert plan.measures(merged, EVENTS) == {"visitors": 4.0}
    assert plan.measures(a, EVENTS) == {"visitors": 3.0}  # copy did not share the sketch
    assert plan.measures(plan.decode(plan.encode(merged)), EVENTS) == {"visitors": 4.0}
    assert orjson.loads(orjson.dumps(plan.encode(merged))) == plan.encode(merged)  # JSON-safe


def test_a_distinct_count_skips_events_without_the_field() -> None:
    plan = make_plan(measures={"utm": {"event": "click", "distinct": "utm_source"}}, kpis={})
    vector = plan.new_vector()
    assert plan.add(vector, "click", {"cost": 1.0}) is False
    assert plan.add(vector, "click", {"cost": 1.0, "utm_source": "news"}) is True
    assert plan.measures(vector, EVENTS) == {"utm": 1.0}


def test_groups_per_breakdown_with_none_for_a_missing_attribute() -> None:
    plan = make_plan(breakdowns=[["campaign"], ["campaign", "channel"], ["utm_source"], []])
    assert plan.groups({"campaign": "spring", "channel": "email"}) == [
        (0, ("spring",)),
        (1, ("spring", "email")),
        (2, ("none",)),
        (3, ()),
    ]


def test_ratio_kpis_and_a_zero_denominator_is_none() -> None:
    plan = make_plan()
    m = {"impressions": 0.0, "clicks": 3.0, "click_cost": 1.5, "orders": 0.0}
    assert plan.kpi_values(m, EVENTS) == {"ctr": None, "cpc": 0.5}
    m = {"impressions": 4.0, "clicks": 0.0, "click_cost": 0.0, "orders": 0.0}
    assert plan.kpi_values(m, EVENTS) == {"ctr": 0.0, "cpc": None}


KINDS = {
    "cpm": {"ratio": ["cost", "impressions"], "scale": 1000, "direction": "lower"},
    "roi": {"difference": ["revenue", "cost"], "over": "cost"},
    "nps": {"difference": ["promoters", "detractors"], "over": "responses", "scale": 100},
    "growth": {"change": "revenue"},
    "orders": {"measure": "orders", "unit": "count"},
}
KIND_MEASURES = {
    "impressions": {"event": "impression"},
    "cost": {"event": "spend", "sum": "amount"},
    "revenue": {"event": "order", "sum": "revenue"},
    "orders": {"event": "order"},
    "responses": {"event": "survey"},
    "promoters": {"event": "survey", "where": {"score": {"in": [9, 10]}}},
    "detractors": {"event": "survey", "where": {"score": {"in": [0, 1, 2, 3, 4, 5, 6]}}},
}

KIND_CASES = [
    # cost 20 over 4000 impressions, per thousand: 5
    ({"cost": 20.0, "impressions": 4000.0}, None, "cpm", 5.0),
    # the catalogue's ROI example: cost 8000, revenue 10000 -> 25 %
    ({"revenue": 10_000.0, "cost": 8_000.0}, None, "roi", 0.25),
    # a loss is a negative ROI
    ({"revenue": 2_000.0, "cost": 8_000.0}, None, "roi", -0.75),
    # no cost: ROI missing
    ({"revenue": 2_000.0, "cost": 0.0}, None, "roi", None),
    # 5 promoters, 2 detractors of 10 responses: NPS 30
    ({"promoters": 5.0, "detractors": 2.0, "responses": 10.0}, None, "nps", 30.0),
    # revenue up from 100 to 150: growth 50 %
    ({"revenue": 150.0}, {"revenue": 100.0}, "growth", 0.5),
    # no previous window: growth missing
    ({"revenue": 150.0}, None, "growth", None),
    # a previous window with no revenue: growth missing, never infinite
    ({"revenue": 150.0}, {"revenue": 0.0}, "growth", None),
    # a measure KPI is the measure itself, even when zero
    ({"orders": 0.0}, None, "orders", 0.0),
]


@pytest.mark.parametrize(("given", "previous", "kpi", "value"), KIND_CASES)
def test_kpi_kinds(given: dict[str, float], previous: dict[str, float] | None, kpi: str, value: float | None) -> None:
    plan = make_plan(measures=KIND_MEASURES, kpis=KINDS)
    measures = dict.fromkeys(KIND_MEASURES, 0.0) | given
    assert plan.kpi_values(measures, EVENTS, previous)[kpi] == value
    assert plan.has_change


def test_session_kpis_wait_for_the_sessions_phase() -> None:
    plan = Plan(config.from_dict(CLASSIC))
    assert [(k.name, k.phase) for k in plan.kpis] == [
        ("ctr", EVENTS),
        ("cpc", EVENTS),
        ("conversion_rate", EVENTS),
        ("bounce_rate", SESSIONS),
    ]
    assert plan.phases == (EVENTS, SESSIONS)
    assert plan.needs_sessions
    assert plan.passes == (EVENTS, SESSIONS)  # no delayed sources: no second passes
    assert plan.waits == {}
    vector = [10.0, 2.0, 1.0, 1.0, 4.0, 1.0]
    # the events phase shows neither the session measures nor bounce_rate
    events = plan.measures(vector, EVENTS)
    assert events == {"impressions": 10.0, "clicks": 2.0, "click_cost": 1.0, "orders": 1.0}
    assert plan.kpi_values(events, EVENTS) == {"ctr": 0.2, "cpc": 0.5, "conversion_rate": 0.5}
    # the sessions phase shows every measure and only the session KPI
    sessions = plan.measures(vector, SESSIONS)
    assert sessions["bounced_sessions"] == 1.0
    assert plan.kpi_values(sessions, SESSIONS) == {"bounce_rate": 0.25}


def test_a_derived_measure_of_a_session_measure_waits_for_sessions_too() -> None:
    plan = make_plan(
        measures={
            "sessions": {"event": "session"},
            "orders": {"event": "order"},
            "touches": {"add": ["sessions", "orders"]},
        },
        kpis={"per_touch": {"ratio": ["orders", "touches"]}},
    )
    assert plan.session_measures == {"sessions", "touches"}
    assert [(k.name, k.phase) for k in plan.kpis] == [("per_touch", SESSIONS)]
    assert plan.measures([3.0, 1.0], EVENTS) == {"orders": 1.0}
    assert plan.measures([3.0, 1.0], SESSIONS) == {"sessions": 3.0, "orders": 1.0, "touches": 4.0}


def test_a_plan_without_session_kpis_has_only_the_events_phase() -> None:
    plan = make_plan()
    assert plan.phases == (EVENTS,)
    assert not plan.needs_sessions
    assert not plan.has_change


def test_disabled_kpis_are_not_computed() -> None:
    plan = make_plan(kpis={"ctr": {"ratio": ["clicks", "impressions"], "enabled": False}})
    assert plan.kpis == []
    assert plan.kpi_values({"impressions": 1.0, "clicks": 1.0}, EVENTS) == {}


def test_volume_names_what_a_value_rests_on() -> None:
    plan = make_plan(measures=KIND_MEASURES, kpis=KINDS)
    m = dict.fromkeys(KIND_MEASURES, 0.0) | {"revenue": 10.0, "cost": 4.0, "impressions": 2000.0}
    assert plan.kpi_by_name["cpm"].volume(m, None) == (4.0, "cost", 2000.0, "impressions")
    assert plan.kpi_by_name["roi"].volume(m, None) == (6.0, "revenue − cost", 4.0, "cost")
    assert plan.kpi_by_name["growth"].volume(m, {"revenue": 8.0}) == (10.0, "revenue", 8.0, "previous revenue")
    assert plan.kpi_by_name["orders"].volume(m, None) == (0.0, "orders", 1.0, "window")
