"""A window's tests judged together: false-discovery control, root causes, KPI-tree drivers.

Exact values for hand-built windows; the scale properties (thousands of campaigns) are in
tests/kpimon/test_alerts_at_scale.py.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from kpi_core import config
from kpi_core.alerting import AlertEngine, bh_qvalues, score_p, wilson
from kpi_core.errors import ConfigError
from kpi_core.plan import Plan
from kpi_core.results import Snapshot

HOUR = 3_600_000
T = 1_704_067_200_000


def test_bh_q_values_match_the_step_up_procedure_by_hand() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    # sorted: 0.005, 0.01, 0.03, 0.04, 0.5 -> m·p/rank: 0.025, 0.025, 0.05, 0.05, 0.5
    assert bh_qvalues(p) == pytest.approx([0.025, 0.05, 0.05, 0.025, 0.5])
    # Among 100 tests (95 not listed), the same p-values count 20 times as much.
    assert bh_qvalues(p, 100) == pytest.approx([0.5, 1.0, 1.0, 0.5, 1.0])
    # The running minimum from the top: a larger p-value can lower a smaller one's q.
    assert bh_qvalues([0.02, 0.021, 0.022]) == pytest.approx([0.022, 0.022, 0.022])


def test_bh_does_not_depend_on_the_order_of_the_tests() -> None:
    rng = random.Random(3)
    p = [rng.random() ** 3 for _ in range(200)]
    order = list(range(200))
    rng.shuffle(order)
    q = bh_qvalues(p)
    assert [q[i] for i in order] == bh_qvalues([p[i] for i in order])


def test_the_score_p_value_is_below_its_level_exactly_when_the_wilson_interval_clears_the_line() -> None:
    rng = random.Random(11)
    for _ in range(2000):
        trials = rng.randint(20, 20_000)
        line = rng.uniform(0.01, 0.3)
        successes = rng.randint(0, trials)
        confidence = rng.choice([0.9, 0.95, 0.99])
        lo, hi = wilson(successes, trials, confidence)
        p = score_p(successes, trials, line, "higher")
        assert p is not None
        if abs(hi - line) > 1e-9:  # not on the edge, where rounding decides
            assert (hi < line) == (p < (1 - confidence) / 2), (successes, trials, line)


def _plan(targets: dict[str, Any], breakdowns: list[list[str]], **alerting: Any) -> Plan:
    return Plan(config.from_dict({
        "windows": [{"size": "1h"}], "breakdowns": breakdowns,
        "measures": {"impressions": {"event": "impression"}, "clicks": {"event": "click"}},
        "kpis": {"ctr": {"ratio": ["clicks", "impressions"], "unit": "percent"}},
        "targets": targets, **({"alerting": alerting} if alerting else {}),
    }))


def _snap(plan: Plan, dims: tuple[str, ...], values: tuple[str, ...], imps: float, clicks: float, start: int = T) -> Snapshot:
    m = {"impressions": imps, "clicks": clicks}
    return Snapshot("1h", start, start + HOUR, dims, dict(zip(dims, values)), "events", m, plan.kpi_values(m, "events"))


def _window(plan: Plan, cells: dict[tuple[str, str], tuple[float, float]], start: int = T) -> list[Snapshot]:
    """Snapshots at (campaign, device), campaign, device and total level from per-segment (impressions, clicks)."""
    out = []
    levels: list[tuple[str, ...]] = [("campaign", "device"), ("campaign",), ("device",), ()]
    for dims in levels:
        sums: dict[tuple[str, ...], list[float]] = {}
        for (campaign, device), (imps, clicks) in cells.items():
            g = {"campaign": campaign, "device": device}
            key = tuple(g[d] for d in dims)
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] += imps
            acc[1] += clicks
        out += [_snap(plan, dims, key, imps, clicks, start) for key, (imps, clicks) in sums.items()]
    return out


def _cells(drop: dict[tuple[str, str], float] | None = None) -> dict[tuple[str, str], tuple[float, float]]:
    """Ten campaigns on two devices, 10,000 impressions at 5.0% each, except the dropped segments."""
    out = {}
    for c in range(10):
        for d in ("ios", "android"):
            key = (f"c{c}", d)
            out[key] = (10_000.0, 500.0 * (drop or {}).get(key, 1.0))
    return out


RULE = {"ctr": {"value": "4.5%", "confidence": 0.95}}
LEVELS = [["campaign", "device"], ["campaign"], ["device"], []]


def test_a_drop_in_one_segment_opens_one_incident_on_it_with_the_wider_breaches_in_its_thread() -> None:
    plan = _plan(RULE, LEVELS)
    events = AlertEngine(plan).evaluate(0, T, "events", _window(plan, _cells({("c3", "ios"): 0.6})))
    assert [(e.kind, e.group) for e in events] == [("opened", {"campaign": "c3", "device": "ios"})]
    (f,) = events[0].findings
    # c3 on iOS: 300 of 10,000 against a 4.5% line is 150 clicks short; c3 as a whole (500 + 300
    # of 20,000) is 100 short: the segment explains all of it (its sibling is 50 over the line).
    assert f.explains == [{"breakdown": "campaign", "group": {"campaign": "c3"}, "value": 0.04, "share": 1.0, "wider": True}]
    # 33 tests (20 segments, 10 campaigns, 2 devices, the total); the segment's p-value is the smallest.
    assert f.q_value == pytest.approx(33 * score_p(300, 10_000, 0.045, "higher"), rel=1e-12)


def test_a_drop_hidden_by_a_flat_total_still_alerts() -> None:
    plan = _plan(RULE, LEVELS)
    # c3 drops on iOS while c4 rises on iOS by as much: the iOS and total lines do not move.
    cells = _cells({("c3", "ios"): 0.6})
    cells[("c4", "ios")] = (10_000.0, 700.0)
    events = AlertEngine(plan).evaluate(0, T, "events", _window(plan, cells))
    assert [(e.kind, e.group) for e in events] == [("opened", {"campaign": "c3", "device": "ios"})]


def test_a_drop_on_every_device_of_a_campaign_is_one_incident_on_the_campaign() -> None:
    plan = _plan(RULE, LEVELS)
    events = AlertEngine(plan).evaluate(0, T, "events", _window(plan, _cells({("c3", "ios"): 0.6, ("c3", "android"): 0.6})))
    assert [(e.kind, e.group) for e in events] == [("opened", {"campaign": "c3"})]
    (f,) = events[0].findings
    assert sorted((e["group"]["device"], e["share"], e["wider"]) for e in f.explains) == [("android", 0.5, False), ("ios", 0.5, False)]


def test_without_root_causes_each_level_would_open_its_own_incident() -> None:
    # The same segment drop, judged level by level (one breakdown per engine): three incidents.
    opened = []
    for level in LEVELS[:2]:
        plan = _plan(RULE, [level])
        window = [s for s in _window(plan, _cells({("c3", "ios"): 0.6})) if list(s.dims) == level]
        opened += [e.group for e in AlertEngine(plan).evaluate(0, T, "events", window) if e.kind == "opened"]
    assert opened == [{"campaign": "c3", "device": "ios"}, {"campaign": "c3"}]


def test_fdr_keeps_a_breach_that_one_test_alone_would_call_and_drops_it_among_many() -> None:
    # 3.87% on 10,000 impressions against a 4.5% line: one-sided p ≈ 0.12% (Wilson 99% clears the line).
    rule = {"ctr": {"value": "4.5%", "confidence": 0.99}}
    plan = _plan(rule, [["campaign"]])
    lonely = [_snap(plan, ("campaign",), ("c0",), 10_000, 387)]
    assert [e.kind for e in AlertEngine(plan).evaluate(0, T, "events", lonely)] == ["opened"]
    crowd = lonely + [_snap(plan, ("campaign",), (f"c{i}",), 10_000, 500) for i in range(1, 200)]
    assert AlertEngine(plan).evaluate(0, T, "events", crowd) == []  # q ≈ 200 × 0.0012 > 0.1
    off = _plan(rule, [["campaign"]], fdr=None)
    assert [e.group for e in AlertEngine(off).evaluate(0, T, "events", crowd)] == [{"campaign": "c0"}]


def test_fdr_per_rule_weighs_each_kpi_in_its_own_family() -> None:
    p = score_p(387, 10_000, 0.045, "higher")
    assert p is not None and 0.001 < p < 0.002
    targets = {"ctr": {"value": "4.5%", "confidence": 0.99}, "ctr2": {"value": "4.5%", "confidence": 0.99}}

    def engine(family: str) -> tuple[Plan, AlertEngine]:
        plan = Plan(config.from_dict({
            "windows": [{"size": "1h"}], "breakdowns": [["campaign"]],
            "measures": {"impressions": {"event": "impression"}, "clicks": {"event": "click"}, "imps2": {"event": "impression"},
                         "clicks2": {"event": "click"}},
            "kpis": {"ctr": {"ratio": ["clicks", "impressions"]}, "ctr2": {"ratio": ["clicks2", "imps2"]}},
            "targets": targets, "alerting": {"fdr": {"q": 0.1, "family": family}},
        }))
        return plan, AlertEngine(plan)

    def window(plan: Plan) -> list[Snapshot]:
        # ctr: one breach among 50 tests; ctr2: 50 tests on the line.
        out = []
        for i in range(50):
            m = {"impressions": 10_000.0, "clicks": 387.0 if i == 0 else 500.0, "imps2": 10_000.0, "clicks2": 500.0}
            out.append(Snapshot("1h", T, T + HOUR, ("campaign",), {"campaign": f"c{i}"}, "events", m, plan.kpi_values(m, "events")))
        return out

    # Per rule: 50 × p ≈ 0.06 is a discovery; globally, 100 × p ≈ 0.12 is not.
    plan, e = engine("rule")
    assert [(x.group, [f.kpi for f in x.findings]) for x in e.evaluate(0, T, "events", window(plan))] == [({"campaign": "c0"}, ["ctr"])]
    plan, e = engine("global")
    assert e.evaluate(0, T, "events", window(plan)) == []


def _money_plan() -> Plan:
    cfg = config.load().model_dump(by_alias=True)
    cfg["windows"] = [{"size": "1h"}]
    cfg["breakdowns"] = [["campaign"]]
    cfg["arrival"] = {}
    cfg["settle_windows"] = None
    cfg["targets"] = {"roas": {"value": 3.0}}
    return Plan(config.from_dict(cfg))


def _money(plan: Plan, start: int, clicks: float, orders: float, aov: float, cpc: float) -> list[Snapshot]:
    m = {name: 0.0 for name in plan.config.measures}
    m.update(clicks=clicks, orders=orders, revenue=orders * aov, click_cost=clicks * cpc, cost=clicks * cpc)
    return [Snapshot("1h", start, start + HOUR, ("campaign",), {"campaign": "spring"}, "events", m, plan.kpi_values(m, "events"))]


def test_a_roas_alert_names_conversion_rate_as_its_driver_and_the_parts_add_up() -> None:
    plan = _money_plan()
    engine = AlertEngine(plan)
    for h in range(3):  # healthy: CVR 5%, AOV 80, CPC 1.00 -> ROAS 4.0
        assert engine.evaluate(0, T + h * HOUR, "events", _money(plan, T + h * HOUR, 1000, 50, 80.0, 1.0)) == []
    start = T + 3 * HOUR  # conversion halves; order value +2.5%, cost per click +2%
    (event,) = engine.evaluate(0, start, "events", _money(plan, start, 1000, 25, 82.0, 1.02))
    (f,) = event.findings
    change = (25 * 82.0 / 1020.0) / 4.0 - 1
    logs = {"click_to_order": math.log(0.5), "aov": math.log(82 / 80), "cost_per_click": -math.log(1.02)}
    total = sum(logs.values())
    assert f.kpi == "roas" and f.reference == T + 2 * HOUR
    assert f.change == pytest.approx(change, rel=1e-12)
    assert [d["kpi"] for d in f.drivers] == ["click_to_order", "aov", "cost_per_click"]
    for d in f.drivers:
        assert d["part"] == pytest.approx(change * logs[d["kpi"]] / total, rel=1e-12)
    assert [round(d["change"], 12) for d in f.drivers] == [-0.5, 0.025, 0.02]
    assert [d["inverse"] for d in f.drivers] == [False, False, True]
    assert abs(sum(d["part"] for d in f.drivers) - f.change) < 1e-9

    from alerts.render import render_event

    text = str(render_event(event))
    assert "roas -49.8% since 02:00: click_to_order -50.0% (most of it), aov +2.5%, cost_per_click +2.0%" in text


def test_a_kpi_tree_that_does_not_multiply_out_is_refused_naming_the_field() -> None:
    cfg = config.load().model_dump(by_alias=True)
    cfg["kpis"]["roas"]["drivers"] = ["click_to_order", "aov", "cpc"]
    with pytest.raises(ConfigError) as exc:
        config.from_dict(cfg)
    assert "kpis.roas.drivers" in str(exc.value) and "do not multiply out" in str(exc.value)
    cfg["kpis"]["roas"]["drivers"] = ["click_to_order", "nope"]
    with pytest.raises(ConfigError) as exc:
        config.from_dict(cfg)
    assert "kpis.roas.drivers[1]" in str(exc.value)
