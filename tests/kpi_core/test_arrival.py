"""Late and restated money data (config.arrival): provisional first, final when the delayed source
has reported; restated reports replace each other; replay equals live for out-of-order input."""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
import pytest

from kpi_core import config
from kpi_core.aggregate import FOREVER, PartitionAggregator, Routed
from kpi_core.combine import Combiner
from kpi_core.errors import ConfigError
from kpi_core.pipeline import LocalPipeline, run_all
from kpi_core.plan import Plan
from kpi_core.results import Snapshot

T = 1_714_564_800_000  # 2024-05-01T12:00:00Z
SEC, MIN, HOUR = 1000, 60_000, 3_600_000

RAW: dict[str, Any] = {
    "windows": [{"size": "1h"}],
    "allowed_lateness": "10s",
    "breakdowns": [["campaign"]],
    "measures": {
        "impressions": {"event": "impression"},
        "clicks": {"event": "click"},
        "click_cost": {"event": "click", "sum": "cost"},
        "spend": {"event": "spend", "sum": "amount"},
        "cost": {"add": ["click_cost", "spend"]},
        "orders": {"event": "order"},
        "revenue": {"event": "order", "sum": "revenue"},
    },
    "kpis": {
        "ctr": {"ratio": ["clicks", "impressions"]},
        "cpc": {"ratio": ["click_cost", "clicks"], "direction": "lower"},
        "cpa": {"ratio": ["cost", "orders"], "direction": "lower"},
        "roas": {"ratio": ["revenue", "cost"]},
    },
    "arrival": {"ad-spend": {"delay": "6h", "restates": {"key": ["campaign"], "version": "report_version"}}},
}


def make_plan(**overrides: Any) -> Plan:
    return Plan(config.from_dict({**RAW, **overrides}))


class Feed:
    """Events as the router hands them over: each type from its topic's partition 0."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.offsets = itertools.count()

    def __call__(self, etype: str, ts: int, campaign: str = "spring", **fields: Any) -> Routed:
        return (self.plan.source_of(etype), next(self.offsets), etype, ts, {"campaign": campaign, "channel": "search", **fields})


def traffic(ev: Feed, hours: int = 3) -> list[Routed]:
    """Per minute, 10 impressions and 2 clicks at 0.5; every 10 minutes an order of 40 (time order)."""
    out = []
    for m in range(hours * 60):
        ts = T + m * MIN
        out += [ev("impression", ts + i * SEC) for i in range(10)]
        out += [ev("click", ts + 20 * SEC, cost=0.5), ev("click", ts + 40 * SEC, cost=0.5)]
        if m % 10 == 5:
            out.append(ev("order", ts + 30 * SEC, order_id=f"o{m}", revenue=40.0, customer_id=f"c{m}", new_customer=True))
    return out


def spend(ev: Feed, hour: int, amount: float, version: int | None = None, campaign: str = "spring") -> Routed:
    fields: dict[str, Any] = {"amount": amount}
    if version is not None:
        fields["report_version"] = version
    return ev("spend", T + hour * HOUR, campaign, **fields)


def snaps(out: list[Any]) -> list[Snapshot]:
    return [x for x in out if isinstance(x, Snapshot)]


def first_hour(out: list[Any]) -> dict[int, Snapshot]:
    """Version -> the first hour's snapshot."""
    return {s.version: s for s in snaps(out) if s.start == T}


def test_money_kpis_wait_for_the_spend_report_and_fast_kpis_do_not() -> None:
    plan = make_plan()
    ev = Feed(plan)
    pipe = LocalPipeline(plan)
    stream = traffic(ev)  # 12:00-15:00 of impressions, clicks and orders, in time order
    at_1310 = next(i for i, e in enumerate(stream) if e[3] >= T + HOUR + 10 * MIN)
    early = pipe.feed(stream[:at_1310])
    # 12:00-13:00 closed on the fast streams: CTR and CPC final, CPA and ROAS provisional
    [v1] = [s for s in snaps(early) if s.start == T]
    assert (v1.version, v1.kpis, v1.waiting_for) == (1, {"ctr": 0.2, "cpc": 0.5}, ["spend"])
    assert v1.provisional == {"cpa": 10.0, "roas": 4.0}  # cost so far is clicks only: 120 × 0.5
    # The spend report for 12:00 arrives at 14:10 (2 h after its hour), restated once.
    rest = stream[at_1310:]
    at_1410 = next(i for i, e in enumerate(rest) if e[3] >= T + 2 * HOUR + 10 * MIN)
    assert [s for s in snaps(pipe.feed(rest[:at_1410])) if s.start == T] == []  # still waiting
    out = pipe.feed([spend(ev, 0, 100.0)])
    # The report says 12:00 is reported, but not that it is final: the next report does.
    assert [s for s in snaps(out) if s.start == T] == []
    out = pipe.feed([spend(ev, 0, 90.0, version=2), spend(ev, 1, 80.0)])
    [v2] = [s for s in snaps(out) if s.start == T]
    assert (v2.version, v2.key, v2.provisional, v2.waiting_for) == (2, v1.key, {}, [])
    assert v2.measures["spend"] == 90.0 and v2.measures["cost"] == 150.0
    assert v2.kpis == {"ctr": 0.2, "cpc": 0.5, "cpa": 25.0, "roas": 1.6}
    assert pipe.late == []


def test_an_older_restatement_arriving_later_does_not_replace_a_newer_one() -> None:
    plan = make_plan()
    ev = Feed(plan)
    events = traffic(ev, hours=2) + [spend(ev, 0, 100.0, 1), spend(ev, 0, 97.0, 3), spend(ev, 0, 98.0, 2)]
    [v2] = [s for s in snaps(list(run_all(plan, events))) if s.start == T and s.version == 2]
    assert v2.measures["spend"] == 97.0


def test_without_a_version_the_later_report_wins_and_nothing_adds_up() -> None:
    plan = make_plan(arrival={"ad-spend": {"delay": "6h", "restates": {"key": ["campaign"]}}})
    ev = Feed(plan)
    events = traffic(ev, hours=2) + [spend(ev, 0, 100.0), spend(ev, 0, 98.0), spend(ev, 0, 99.5, campaign="other")]
    got = {(s.group["campaign"], s.version): s.measures["spend"] for s in snaps(list(run_all(plan, events))) if s.start == T}
    assert got[("spring", 2)] == 98.0
    assert got[("other", 2)] == 99.5


def test_a_feed_that_never_reports_is_waited_for_delay_then_stays_provisional() -> None:
    plan = make_plan()
    ev = Feed(plan)
    pipe = LocalPipeline(plan)
    stream = traffic(ev, hours=8)
    # The fast streams reach 19:05:30 (orders come every 10 minutes): 13:00 + 6 h (the delay)
    # + 10 s of lateness has not passed on every one of them yet...
    cut = next(i for i, e in enumerate(stream) if e[2] == "order" and e[3] >= T + 7 * HOUR + 5 * MIN)
    before = [s for s in snaps(pipe.feed(stream[:cut])) if s.start == T]
    assert [s.version for s in before] == [1]
    # ...and with the next order it has: the first hour's second pass closes without spend, whose
    # KPIs stay provisional (a missing report is not a fall in cost), the rest final.
    [v2] = [s for s in snaps(pipe.feed(stream[cut : cut + 1])) if s.start == T]
    assert (v2.version, v2.measures["spend"], v2.kpis, v2.provisional, v2.waiting_for) == (
        2, 0.0, {"ctr": 0.2, "cpc": 0.5}, {"cpa": 10.0, "roas": 4.0}, ["spend"])


def test_replay_equals_live_for_input_shuffled_within_the_declared_horizons() -> None:
    plan = make_plan()
    ev = Feed(plan)
    ordered = traffic(ev, hours=4)
    for h in range(4):
        ordered.append(spend(ev, h, 100.0 + h, 1))
        ordered.append(spend(ev, h, 90.0 + h, 2))
    ordered.sort(key=lambda e: e[3])
    want = final(run_all(plan, ordered))
    rng = random.Random(5)
    for _ in range(5):
        # Fast events move by up to 5 s (within the 10 s lateness). Spend reports arrive up to
        # 5 h late (within the 6 h delay); an hour's reports before the next hour's (spend
        # declares no lateness of its own), its versions in any order.
        late_by = rng.uniform(0, 4.5 * HOUR)
        shuffled = sorted(ordered, key=lambda e: e[3] + (late_by + rng.uniform(0, 0.5 * HOUR) if e[2] == "spend" else rng.uniform(0, 5 * SEC)))
        offsets = itertools.count()
        renumbered = [(src, next(offsets), t, ts, data) for src, _, t, ts, data in shuffled]
        late: list[Routed] = []
        assert final(run_all(plan, renumbered, batch=rng.randint(1, 500), late=late)) == want
        assert late == []
    assert want[("1h", T, "spring", 2)]["measures"]["spend"] == 90.0


def final(out: Any) -> dict[tuple[str, int, str, int], dict[str, Any]]:
    """What must not depend on the order of arrival: the last version of every snapshot, and the
    KPIs earlier versions call final (their provisional values are, by design, what had arrived)."""
    got = {(s.window, s.start, s.group["campaign"], s.version): s for s in snaps(list(out))}
    last = {}
    for (w, start, c, v), s in sorted(got.items()):
        last[(w, start, c)] = v
    return {k: {"kpis": s.kpis} | ({"measures": s.measures, "provisional": s.provisional} if k[3] == last[k[:3]] else {})
            for k, s in got.items()}


def test_restated_reports_are_exact_after_a_crash_between_restatements() -> None:
    plan = make_plan()
    ev = Feed(plan)
    events = traffic(ev, hours=2)
    reports = [spend(ev, 0, 100.0, 1), spend(ev, 0, 98.0, 2), spend(ev, 0, 96.0, 3)]
    want = final(run_all(plan, events + reports))

    # Stage 1 stores its changes after every step; a crash loses the step in hand, and the
    # restarted stage re-reads it from the stored state (and dedups what it had applied).
    store: dict[str, bytes] = {}
    agg = PartitionAggregator(plan, idle_ms=10_000)
    partials = []
    steps = [events[:5000], events[5000:], reports[:1], reports[1:2], reports[2:]]
    for i, batch in enumerate(steps):
        agg.apply(batch)
        for e in batch:
            agg.observe(e[0], e[3], None)
        if i == 3:
            # killed after writing only part of this step: the cells, not the rest
            changes = agg.changes()
            for k, v in changes:
                if orjson.loads(k)[0] == "c":
                    store[k] = orjson.dumps(v)
            agg = PartitionAggregator(plan, idle_ms=10_000)
            for k, v in store.items():
                agg.load(k, orjson.loads(v))
            agg.apply(batch)  # read again
            for e in batch:
                agg.observe(e[0], e[3], None)
        partials += agg.advance(None) or []
        for k, v in agg.changes():
            if v is None:
                store.pop(k, None)
            else:
                store[k] = orjson.dumps(v)  # as a changelog would: the value as it was then
    partials += agg.advance(None, force=FOREVER) or []
    comb = Combiner(plan, sources=1)
    comb.receive(0, agg.closed, partials)
    got = final(comb.finalize())
    assert got == want
    assert got[("1h", T, "spring", 2)]["measures"]["spend"] == 96.0


def test_arrival_profiles_are_validated_by_field() -> None:
    with pytest.raises(ConfigError) as exc:
        config.from_dict({**RAW, "arrival": {"ad-spend": {"delay": "soon"}}})
    assert [p for p, _ in exc.value.problems] == ["arrival.ad-spend.delay"]
    with pytest.raises(ConfigError) as exc:
        config.from_dict({**RAW, "arrival": {"nope": {"delay": "1h"}}})
    assert [p for p, _ in exc.value.problems] == ["arrival.nope"]
    with pytest.raises(ConfigError) as exc:
        config.from_dict({**RAW, "arrival": {"ad-spend": {"restates": {"key": ["colour"], "version": "amount2"}}}})
    assert {p for p, _ in exc.value.problems} == {"arrival.ad-spend.restates.key[0]", "arrival.ad-spend.restates.version"}


def test_kpis_wait_only_for_the_delayed_types_they_read() -> None:
    plan = make_plan()
    assert {k.name: sorted(k.waits) for k in plan.kpis} == {"ctr": [], "cpc": [], "cpa": ["spend"], "roas": ["spend"]}
    assert plan.passes == ("events", "events+complete")


def test_a_provisional_kpi_is_not_alerted_on_and_a_final_one_is_alerted_once() -> None:
    from kpi_core.incidents import AlertEvent

    # CPA above 20 and CTR below 30% breach; the provisional CPA (10, clicks only) does not.
    plan = make_plan(targets={"cpa": {"value": 20}, "ctr": {"value": 0.3}})
    ev = Feed(plan)
    pipe = LocalPipeline(plan)
    stream = traffic(ev, hours=3)
    at_1310 = next(i for i, e in enumerate(stream) if e[3] >= T + HOUR + 10 * MIN)
    first = [x for x in pipe.feed(stream[:at_1310]) if isinstance(x, AlertEvent)]
    assert [(a.kind, [f.kpi for f in a.findings]) for a in first] == [("opened", ["ctr"])]
    pipe.feed(stream[at_1310:])
    out = pipe.feed([spend(ev, 0, 90.0), spend(ev, 1, 90.0)])
    alerts = [x for x in out if isinstance(x, AlertEvent)]
    assert [(a.kind, sorted(f.kpi for f in a.findings)) for a in alerts] == [("updated", ["cpa", "ctr"])]
    [cpa] = [f for f in alerts[0].findings if f.kpi == "cpa"]
    assert (cpa.value, cpa.status) == (25.0, "firing")


def test_a_stalled_feed_raises_one_stale_alert_holds_its_kpis_and_resolves_when_it_resumes() -> None:
    from kpi_core.incidents import AlertEvent

    # Spend reports every hour, at most 90 minutes behind; they stop for 12:00-15:00.
    plan = make_plan(arrival={"ad-spend": {"delay": "90m"}}, targets={"cpa": {"value": 5}})
    ev = Feed(plan)
    stream = traffic(ev, hours=7)
    for h in (0, 4, 5):  # reports for 12:00, then nothing until 16:00
        at = next(i for i, e in enumerate(stream) if e[3] >= T + (h + 1) * HOUR + 5 * MIN)
        stream.insert(at, spend(ev, h, 30.0))
    pipe = LocalPipeline(plan)
    out = []
    for i in range(0, len(stream), 200):
        out += pipe.feed(stream[i : i + 200])
    alerts = [x for x in out if isinstance(x, AlertEvent)]
    feed = [a for a in alerts if a.thread == "feed|spend"]
    assert [(a.seq, a.kind) for a in feed] == [(1, "opened"), (2, "resolved")]
    assert feed[0].findings[0].rule == "stale" and feed[0].group == {"feed": "spend"}
    # Opened once spend (at 12:00) was more than 90 minutes behind the fast streams...
    assert feed[0].end - feed[0].start > 90 * MIN and feed[0].start == T
    # ...resolved with the 16:00 report.
    assert feed[1].start == T + 4 * HOUR
    # While nothing says spend has passed an hour, that hour's CPA stays provisional when the delay
    # runs out (12:00 has a report, but no later one says it is complete; 13:00 and 14:00 have
    # none), so missing spend raises no CPA alert. The 16:00 report says spend reached 16:00:
    # 15:00 is final, with no spend.
    hours = {s.start: s for s in snaps(out) if s.version == 2}
    assert [h for h in sorted(hours) if "cpa" in hours[h].provisional] == [T, T + HOUR, T + 2 * HOUR]
    assert all(hours[h].waiting_for == ["spend"] for h in (T, T + HOUR, T + 2 * HOUR))
    cpa = [(a.kind, a.start) for a in alerts if any(f.kpi == "cpa" for f in a.findings)]
    assert cpa[0] == ("opened", T + 3 * HOUR)


def test_a_report_read_after_the_fast_streams_went_quiet_still_opens_and_resolves_the_stale_feed() -> None:
    """The feed's progress reaches the stale check on its own, not only with the next closed window."""
    from kpi_core.incidents import AlertEvent

    plan = make_plan(arrival={"ad-spend": {"delay": "90m"}})
    ev = Feed(plan)
    pipe = LocalPipeline(plan)

    def feed_alerts(events: list[Routed]) -> list[tuple[int, str]]:
        return [(a.seq, a.kind) for a in pipe.feed(events) if isinstance(a, AlertEvent) and a.thread == "feed|spend"]

    assert feed_alerts(traffic(ev, hours=3)) == []  # clicks to 15:00; spend has never reported: not judged
    assert feed_alerts([spend(ev, 1, 30.0)]) == [(1, "opened")]  # 13:00: two hours behind
    assert feed_alerts([spend(ev, 2, 30.0)]) == [(2, "resolved")]  # 14:00: within 90 minutes


def test_only_settle_windows_wait_for_delayed_data() -> None:
    # An hourly report says little about a minute: 1m windows publish what arrived in time
    # (CPA provisional, no second version, nothing kept), 1h windows wait for the report.
    plan = make_plan(windows=[{"size": "1m"}, {"size": "1h"}], settle_windows=["1h"])
    ev = Feed(plan)
    events = traffic(ev, hours=2) + [spend(ev, 0, 90.0, 1), spend(ev, 1, 80.0, 1)]
    late: list[Routed] = []
    out = snaps(list(run_all(plan, events, batch=100, late=late)))
    minute = [s for s in out if s.window == "1m" and s.start == T]
    hour = [s for s in out if s.window == "1h" and s.start == T]
    assert [(s.version, s.measures["spend"], sorted(s.provisional)) for s in minute] == [(1, 0.0, ["cpa", "roas"])]
    assert [(s.version, s.measures["spend"]) for s in hour] == [(1, 0.0), (2, 90.0)]
    assert late == []  # the reports are not late for the minutes that never waited for them
    with pytest.raises(ConfigError) as exc:
        make_plan(settle_windows=["1d"])
    assert [p for p, _ in exc.value.problems] == ["settle_windows[0]"]


def test_a_profile_may_name_the_event_type_so_renamed_topics_keep_it() -> None:
    raw = {**RAW, "arrival": {"spend": {"delay": "6h"}}, "topics": {"sources": {"fb-costs": "spend", "clicks-v2": "click"}}}
    plan = Plan(config.from_dict(raw))
    assert plan.delayed == {"spend"} and plan.source_type("fb-costs:3") == "spend"
    with pytest.raises(ConfigError) as exc:
        config.from_dict({**raw, "arrival": {"spend": {"delay": "6h"}, "fb-costs": {"delay": "1h"}}})
    assert [p for p, _ in exc.value.problems] == ["arrival.fb-costs"]


def test_a_delayed_type_on_a_tracker_topic_is_final_once_that_topic_has_moved_past_the_window() -> None:
    """Orders among a tracker's page views: the topic's progress, less the orders' lateness, is theirs."""
    topics = {"sources": {"ad-impressions": "impression", "ad-clicks": "click", "web": "segment"}}
    plan = make_plan(topics=topics, arrival={"order": {"delay": "6h", "lateness": "5m"}})
    ev = Feed(plan)
    stream = [("web:0", *e[1:]) if e[2] == "order" else e for e in traffic(ev)]
    out = LocalPipeline(plan).feed(stream)
    hour = first_hour(out)
    # 12:00 closes on the fast streams first (CPA provisional), then is final once web:0 has
    # reached 13:05 (13:00 plus the orders' 5 minutes): long before the 6 h delay runs out.
    assert hour[1].provisional == {"cpa": 10.0, "roas": 4.0} and hour[1].waiting_for == ["order"]
    assert (hour[2].provisional, hour[2].waiting_for) == ({}, [])
    assert hour[2].kpis["cpa"] == 10.0 and hour[2].measures["orders"] == 6
    # The tracker's topic still moves the watermark: the next hours' fast passes close too.
    assert {s.start for s in snaps(out) if s.version == 1} == {T, T + HOUR}
