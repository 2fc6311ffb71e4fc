"""Revisions (arrival ``revise_for``): a report that arrives after its window's final version, or
restates it, publishes the window again (version 3 and on) with what changed; the alert rules
judge it again, and an incident the revised values would not have opened is withdrawn."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kpi_core import config
from kpi_core.aggregate import PartitionAggregator
from kpi_core.combine import Combiner
from kpi_core.errors import ConfigError
from kpi_core.incidents import AlertEvent
from kpi_core.pipeline import LocalPipeline
from kpi_core.plan import REVISION, Plan
from kpi_core.results import Snapshot
from tests.kpi_core.test_arrival import HOUR, RAW, T, Feed, spend, traffic

REVISED = {"ad-spend": {"delay": "6h", "revise_for": "72h", "restates": {"key": ["campaign"], "version": "report_version"}}}
# Per hour of traffic(): 120 clicks at 0.5 (click cost 60) and 6 orders.
CLICK_COST, ORDERS = 60.0, 6


def make_plan(**overrides: Any) -> Plan:
    return Plan(config.from_dict({**RAW, "arrival": REVISED, **overrides}))


def snaps(out: list[Any], start: int = T) -> list[Snapshot]:
    return [s for s in out if isinstance(s, Snapshot) and s.start == start]


def alerts(out: list[Any]) -> list[AlertEvent]:
    return [a for a in out if isinstance(a, AlertEvent)]


def store(table: dict[str, Any], changes: list[tuple[str, Any]]) -> dict[str, Any]:
    """Apply a stage's changes as its changelog table would (None deletes; values serialized)."""
    for key, value in changes:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = orjson.loads(orjson.dumps(value))
    return table


def _published(plan: Plan) -> tuple[LocalPipeline, Feed, list[Any]]:
    """Three hours of traffic, then the 12:00 report (100) and the 13:00 one, which makes 12:00 final."""
    pipe, ev = LocalPipeline(plan), Feed(plan)
    out = pipe.feed(traffic(ev, hours=3))
    out += pipe.feed([spend(ev, 0, 100.0, 1)])
    out += pipe.feed([spend(ev, 1, 50.0, 1)])
    return pipe, ev, out


def test_a_restatement_after_the_final_version_publishes_version_3_with_what_changed() -> None:
    pipe, ev, out = _published(make_plan())
    assert [s.version for s in snaps(out)] == [1, 2]
    assert snaps(out)[1].kpis["cpa"] == pytest.approx((CLICK_COST + 100) / ORDERS)

    out = pipe.feed([spend(ev, 0, 40.0, 2)])  # the platform takes 60 of invalid clicks back
    (v3,) = snaps(out)
    assert v3.version == 3 and v3.key == snaps(_published(make_plan())[2])[1].key
    assert v3.measures["spend"] == 40.0 and v3.measures["cost"] == CLICK_COST + 40
    assert v3.kpis["cpa"] == pytest.approx((CLICK_COST + 40) / ORDERS)
    assert v3.kpis["ctr"] == snaps(_published(make_plan())[2])[1].kpis["ctr"]  # fast KPIs ride along, unchanged
    assert v3.revised == {"spend": [100.0, 40.0], "cost": [160.0, 100.0]}
    assert v3.to_json()["revised"] == {"spend": [100.0, 40.0], "cost": [160.0, 100.0]}
    assert pipe.late == [] and pipe.revised == 1

    out = pipe.feed([spend(ev, 0, 35.0, 3), spend(ev, 0, 99.0, 2)])  # a newer restatement, then an outdated one
    (v4,) = snaps(out)
    assert (v4.version, v4.measures["spend"]) == (4, 35.0)
    assert pipe.feed([spend(ev, 0, 35.0, 3)]) == []  # the same report again: nothing changed, no version


def test_a_report_that_first_arrives_after_the_final_version_revises_the_window() -> None:
    plan = make_plan()
    pipe, ev = LocalPipeline(plan), Feed(plan)
    pipe.feed(traffic(ev, hours=3))
    out = pipe.feed([spend(ev, 1, 50.0, 1, campaign="other")])  # another campaign's report settles 12:00
    (v2,) = [s for s in snaps(out) if s.group == {"campaign": "spring"}]
    assert v2.measures["spend"] == 0.0 and v2.version == 2
    out = pipe.feed([spend(ev, 0, 30.0, 1)])  # spring's 12:00 report, after that
    (v3,) = snaps(out)
    assert (v3.version, v3.measures["spend"], v3.revised["spend"]) == (3, 30.0, [0.0, 30.0])
    assert pipe.late == []


def test_events_past_the_revision_horizon_are_late_as_before() -> None:
    plan = make_plan(arrival={"ad-spend": {**REVISED["ad-spend"], "revise_for": "2h"}})
    pipe, ev, out = _published(plan)
    pipe.feed(traffic(ev, hours=5)[-60 * 13:])  # the fast streams move on to 17:00: 12:00 + 2 h is behind
    report = spend(ev, 0, 40.0, 2)
    assert snaps(pipe.feed([report])) == []
    assert pipe.late == [report]


def test_without_revise_for_a_report_after_the_final_version_is_late() -> None:
    plan = make_plan(arrival={"ad-spend": {k: v for k, v in REVISED["ad-spend"].items() if k != "revise_for"}})
    pipe, ev, _ = _published(plan)
    report = spend(ev, 0, 40.0, 2)
    assert snaps(pipe.feed([report])) == []
    assert pipe.late == [report]


def test_an_incident_a_revision_removes_is_withdrawn_in_its_own_thread() -> None:
    plan = make_plan(targets={"cpa": {"value": 20}})
    pipe, ev, out = _published(plan)
    (opened,) = alerts(out)
    assert opened.kind == "opened" and opened.findings[0].value == pytest.approx(160 / ORDERS)

    out = pipe.feed([spend(ev, 0, 40.0, 2)])
    (withdrawn,) = alerts(out)
    assert (withdrawn.thread, withdrawn.seq, withdrawn.kind, withdrawn.status) == (opened.thread, 2, "withdrawn", "resolved")
    f = withdrawn.findings[0]
    assert (f.kpi, f.status) == ("cpa", "withdrawn")
    assert f.value == pytest.approx(100 / ORDERS) and f.revised_from == pytest.approx(160 / ORDERS)
    assert withdrawn.extra == {"revision": 3, "revised": {"spend": [100.0, 40.0], "cost": [160.0, 100.0]}}
    assert pipe.alerts.firing() == {}

    # Restated up again: the same window opens the incident again, in the same thread.
    out = pipe.feed([spend(ev, 0, 120.0, 3)])
    (again,) = alerts(out)
    assert (again.thread, again.seq, again.kind) == (opened.thread, 3, "opened")


def test_a_revision_that_clears_an_incident_opened_earlier_resolves_it() -> None:
    plan = make_plan(targets={"cpa": {"value": 20}})
    pipe, ev = LocalPipeline(plan), Feed(plan)
    out = pipe.feed(traffic(ev, hours=4))
    out += pipe.feed([spend(ev, 0, 100.0, 1)])
    out += pipe.feed([spend(ev, 1, 100.0, 1)])
    out += pipe.feed([spend(ev, 2, 10.0, 1)])  # 12:00 and 13:00 final: both breach
    assert [a.kind for a in alerts(out)] == ["opened"]
    out = pipe.feed([spend(ev, 1, 10.0, 2)])  # 13:00 restated: it no longer breaches
    (resolved,) = alerts(out)
    assert resolved.kind == "resolved" and resolved.findings[0].status == "resolved"
    out = pipe.feed([spend(ev, 0, 10.0, 2)])  # 12:00 is history that 13:00 was judged after
    assert alerts(out) == [] and snaps(out)[0].version == 3


def test_a_revision_survives_a_crash_and_a_replay_at_both_stages() -> None:
    """Stage 1's state from before a revision, the revision read again: stage 2 publishes it once."""
    plan = make_plan()
    ev = Feed(plan)
    agg, comb = PartitionAggregator(plan, idle_ms=10_000), Combiner(plan, sources=1)
    events = traffic(ev, hours=3) + [spend(ev, 0, 100.0, 1), spend(ev, 1, 50.0, 1)]
    for i, batch in enumerate([events[:-2], events[-2:-1], events[-1:]]):
        agg.apply(batch)
        for e in batch:
            agg.observe(e[0], e[3], None)
        closed = agg.advance(None) or []
        comb.receive(0, agg.report_horizons(), closed, at=i + 1)
        comb.finalize_windows()
    stored = dict(store({}, agg.changes()))

    restatement = [spend(ev, 0, 40.0, 2)]
    agg.apply(restatement)
    partials = agg.advance(None)
    assert [(p.phase, p.vector) for p in partials] == [(REVISION, [40.0])]
    agg.changes()  # the crash comes after the revision was sent but before this was stored

    again = PartitionAggregator(plan, idle_ms=10_000)
    for key, value in stored.items():
        again.load(key, value)
    again.apply(restatement)
    replayed = again.advance(None)
    assert [(p.phase, p.vector) for p in replayed] == [(REVISION, [40.0])]

    comb.receive(0, agg.report_horizons(), partials, at=4)
    (closed,) = comb.finalize_windows()
    assert closed.revision and [s.measures["spend"] for s in closed.snapshots] == [40.0]
    comb.receive(0, again.report_horizons(), replayed, at=4)  # the same position: a repeat
    assert comb.finalize_windows() == []
    comb.receive(0, again.report_horizons(), [p for p in replayed], at=3)  # an earlier position never steps back
    assert comb.finalize_windows() == []

    # Stage 2's own state round-trips: a restored combiner ignores the repeat too.
    restored = Combiner(plan, sources=1)
    for key, value in store({}, comb.changes()).items():
        restored.load(key, value)
    restored.receive(0, again.report_horizons(), replayed, at=4)
    assert restored.finalize_windows() == []
    # Stage 1's settled state round-trips too: the next restatement starts from 40.
    after = PartitionAggregator(plan, idle_ms=10_000)
    for key, value in store(stored, again.changes()).items():
        after.load(key, value)
    after.apply([spend(ev, 0, 30.0, 3)])
    assert [p.vector for p in after.advance(None)] == [[30.0]]


def test_revise_for_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"arrival\.ad-spend\.revise_for.*declare delay"):
        make_plan(arrival={"ad-spend": {"revise_for": "72h"}})
    with pytest.raises(ConfigError, match=r"arrival\.lead\.revise_for.*distinct"):
        make_plan(arrival={"lead": {"delay": "2h", "revise_for": "1d"}},
                  measures={**RAW["measures"], "leads": {"event": "lead", "distinct": "lead_id"}})
    with pytest.raises(ConfigError, match=r"arrival\.ad-spend\.revise_for"):
        make_plan(arrival={"ad-spend": {"delay": "6h", "revise_for": "soon"}})
