"""Stage 2: merging partials from several stage-1 partitions, gating on horizons, dedup by source."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
import pytest

from kpi_core.aggregate import FOREVER, Partial, PartitionAggregator, Routed
from kpi_core.combine import Combiner
from kpi_core.pipeline import run
from kpi_core.plan import Plan
from kpi_core.results import Snapshot

from .helpers import MIN, SEC, T, Events, by_key, make_plan


def plan() -> Plan:
    # measures: impressions, clicks, click_cost, orders; one breakdown: the total
    return make_plan(breakdowns=[[]], session_timeout="5m")


def part(start: int, vector: list[float], phase: str = "events") -> Partial:
    return Partial(window=0, start=start, phase=phase, breakdown=0, group=(), vector=vector)


def summary(snapshots: list[Snapshot]) -> list[tuple[int, str, dict[str, float]]]:
    return [(s.start, s.phase, s.measures) for s in snapshots]


def test_every_source_must_report_before_anything_is_final() -> None:
    comb = Combiner(plan(), sources=2)
    comb.receive(0, T + MIN, [part(T, [10.0, 1.0, 0.5, 0.0])])
    assert comb.finalize() == []
    comb.receive(1, T + MIN, [part(T, [30.0, 3.0, 1.5, 1.0])])
    assert comb.finalize() == [
        Snapshot(
            window="1m",
            start=T,
            end=T + MIN,
            dims=(),
            group={},
            phase="events",
            measures={"impressions": 40.0, "clicks": 4.0, "click_cost": 2.0, "orders": 1.0},
            kpis={"ctr": 0.1, "cpc": 0.5},
        )
    ]
    assert comb.pending == {}
    assert comb.finalize() == []  # nothing is emitted twice


def test_a_source_with_no_data_for_a_window_still_gates_it_by_its_horizon() -> None:
    comb = Combiner(plan(), sources=2)
    comb.receive(0, T + MIN, [part(T, [1.0, 1.0, 1.0, 0.0])])
    comb.receive(1, T + MIN - 1, [])  # one ms short of the window's end
    assert comb.finalize() == []
    comb.receive(1, T + MIN, [])
    assert summary(comb.finalize()) == [(T, "events", {"impressions": 1.0, "clicks": 1.0, "click_cost": 1.0, "orders": 0.0})]


def test_a_redelivered_report_is_ignored() -> None:
    comb = Combiner(plan(), sources=2)
    report = [part(T, [2.0, 1.0, 1.0, 0.0])]
    comb.receive(0, T + MIN, report)
    comb.receive(0, T + MIN, report)  # stage 1 crashed before storing its horizon and sent it again
    comb.receive(1, T + MIN, [part(T, [3.0, 0.0, 0.0, 0.0])])
    comb.receive(1, T + MIN, [part(T, [3.0, 0.0, 0.0, 0.0])])
    assert summary(comb.finalize()) == [(T, "events", {"impressions": 5.0, "clicks": 1.0, "click_cost": 1.0, "orders": 0.0})]


def test_several_groups_of_one_window_in_one_report_are_all_merged() -> None:
    comb = Combiner(make_plan(breakdowns=[["campaign"]]), sources=1)
    comb.receive(
        0,
        T + MIN,
        [
            Partial(0, T, "events", 0, ("a",), [1.0, 0.0, 0.0, 0.0]),
            Partial(0, T, "events", 0, ("b",), [2.0, 0.0, 0.0, 0.0]),
        ],
    )
    assert [(s.group, s.measures["impressions"]) for s in comb.finalize()] == [({"campaign": "a"}, 1.0), ({"campaign": "b"}, 2.0)]


def test_the_slower_source_gates_finalization() -> None:
    comb = Combiner(plan(), sources=2)
    comb.receive(0, T + 3 * MIN, [part(T, [1.0, 0, 0, 0]), part(T + MIN, [2.0, 0, 0, 0]), part(T + 2 * MIN, [4.0, 0, 0, 0])])
    comb.receive(1, T + MIN, [part(T, [10.0, 0, 0, 0])])
    assert [(s.start, s.measures["impressions"]) for s in comb.finalize()] == [(T, 11.0)]
    comb.receive(1, T + 2 * MIN + 30 * SEC, [part(T + MIN, [20.0, 0, 0, 0])])
    assert [(s.start, s.measures["impressions"]) for s in comb.finalize()] == [(T + MIN, 22.0)]
    comb.receive(1, T + 3 * MIN, [])
    assert [(s.start, s.measures["impressions"]) for s in comb.finalize()] == [(T + 2 * MIN, 4.0)]


def test_a_horizon_never_moves_back() -> None:
    comb = Combiner(plan(), sources=1)
    comb.receive(0, T + 2 * MIN, [])
    comb.receive(0, T, [part(T + MIN, [1.0, 0, 0, 0])])  # an old report arriving late
    assert comb.horizons == {0: {"events": T + 2 * MIN}}
    # A source sends a window's partials before (or with) the horizon that passes it, so
    # partials behind the source's horizon are a redelivery and are dropped.
    assert comb.finalize() == []


def test_the_sessions_phase_waits_for_the_session_timeout() -> None:
    p = make_plan(
        breakdowns=[[]],
        session_timeout="5m",
        measures={"sessions": {"event": "session"}, "bounced": {"event": "session", "where": {"bounced": True}}},
        kpis={"bounce_rate": {"ratio": ["bounced", "sessions"]}},
    )
    comb = Combiner(p, sources=1)
    comb.receive(0, T + MIN, [part(T, [4.0, 1.0], phase="events")])
    assert summary(comb.finalize()) == [(T, "events", {})]
    comb.receive(0, T + 6 * MIN - 1, [part(T, [4.0, 1.0], phase="sessions")])
    assert comb.finalize() == []
    comb.receive(0, T + 6 * MIN, [])
    [snap] = comb.finalize()
    assert (snap.phase, snap.measures, snap.kpis) == ("sessions", {"sessions": 4.0, "bounced": 1.0}, {"bounce_rate": 0.25})


def test_a_report_redelivered_after_finalization_is_ignored() -> None:
    comb = Combiner(plan(), sources=2)
    report = [part(T, [1.0, 1.0, 1.0, 0.0])]
    comb.receive(0, T + MIN, report)
    comb.receive(1, T + MIN, [part(T, [2.0, 0.0, 0.0, 0.0])])
    assert [s.measures["impressions"] for s in comb.finalize()] == [3.0]
    comb.receive(0, T + MIN, report)  # stage 1 resends after a crash (streams/app.py _close_stage1)
    assert comb.finalize() == []


def test_windows_without_data_are_closed_empty_once_a_window_was_seen() -> None:
    comb = Combiner(plan(), sources=1)
    comb.receive(0, T + MIN, [part(T, [1.0, 0, 0, 0])])
    assert [(c.start, c.phase, len(c.snapshots)) for c in comb.finalize_windows()] == [(T, "events", 1)]
    assert comb.evaluated == {0: T}
    comb.receive(0, T + 5 * MIN, [part(T + 4 * MIN, [2.0, 0, 0, 0])])
    # T+1m and T+2m had no data: closed empty, in order, up to empty_until; T+4m has data
    closed = comb.finalize_windows(empty_until=T + 3 * MIN)
    assert [(c.start, len(c.snapshots)) for c in closed] == [(T + MIN, 0), (T + 2 * MIN, 0), (T + 4 * MIN, 1)]
    assert comb.evaluated == {0: T + 4 * MIN}


# -- persistence -------------------------------------------------------------------------


def serialized(changes: list[tuple[str, Any]]) -> tuple[dict[str, bytes], set[str]]:
    """The changes as a store would see them: serialized upserts, and deletes (value None)."""
    upserts = {k: orjson.dumps(v) for k, v in changes if v is not None}
    deleted = {k for k, v in changes if v is None}
    assert len(upserts) + len(deleted) == len(changes)  # each key once
    return upserts, deleted


def test_changes_and_load_round_trip() -> None:
    p = plan()
    first = Combiner(p, sources=2)
    first.receive(0, T + 2 * MIN, [part(T, [1.0, 1.0, 0.25, 0.0]), part(T + MIN, [5.0, 0, 0, 0])])
    first.receive(1, T + MIN - 1, [])
    upserts, deleted = serialized(first.changes())
    assert sorted(upserts) == ['["h"]', f'["p",0,{T},"events"]', f'["p",0,{T + MIN},"events"]']
    assert deleted == set()
    assert orjson.loads(upserts['["h"]']) == {"0": {"events": T + 2 * MIN}, "1": {"events": T + MIN - 1}}
    assert orjson.loads(upserts[f'["p",0,{T},"events"]']) == {"sources": [0], "groups": [[0, [], [1.0, 1.0, 0.25, 0.0]]]}

    second = Combiner(p, sources=2)
    for k, v in upserts.items():
        second.load(k, orjson.loads(v))
    second.receive(0, T + 2 * MIN, [part(T, [1.0, 1.0, 0.25, 0.0])])  # redelivered after the restart: ignored
    second.receive(1, T + 2 * MIN, [part(T, [3.0, 1.0, 0.75, 0.0])])
    assert summary(second.finalize()) == [
        (T, "events", {"impressions": 4.0, "clicks": 2.0, "click_cost": 1.0, "orders": 0.0}),
        (T + MIN, "events", {"impressions": 5.0, "clicks": 0.0, "click_cost": 0.0, "orders": 0.0}),
    ]
    upserts, deleted = serialized(second.changes())
    assert deleted == {f'["p",0,{T},"events"]', f'["p",0,{T + MIN},"events"]'}
    assert orjson.loads(upserts['["h"]']) == {"0": {"events": T + 2 * MIN}, "1": {"events": T + 2 * MIN}}
    assert second.changes() == []


def test_load_keeps_the_larger_horizon() -> None:
    comb = Combiner(plan(), sources=1)
    comb.receive(0, T + 5 * MIN, [])
    comb.load('["h"]', {"0": T})  # as stored before passes existed
    assert comb.horizons == {0: {"events": T + 5 * MIN}}
    comb.load('["h"]', {"0": {"events": T + 6 * MIN}})
    assert comb.horizons == {0: {"events": T + 6 * MIN}}


def test_the_previous_window_for_change_kpis_survives_a_restart() -> None:
    p = make_plan(
        breakdowns=[["campaign"]],
        measures={"revenue": {"event": "order", "sum": "revenue"}},
        kpis={"growth": {"change": "revenue"}},
    )
    first = Combiner(p, sources=1)
    first.receive(0, T + MIN, [Partial(0, T, "events", 0, ("a",), [80.0])])
    assert [(s.kpis, s.previous) for s in first.finalize()] == [({"growth": None}, None)]
    upserts, _ = serialized(first.changes())
    assert orjson.loads(upserts[f'["l",0,"events",0,["a"]]']) == {"start": T, "measures": {"revenue": 80.0}}
    second = Combiner(p, sources=1)
    for k, v in upserts.items():
        second.load(k, orjson.loads(v))
    second.receive(0, T + 2 * MIN, [Partial(0, T + MIN, "events", 0, ("a",), [100.0])])
    assert [(s.kpis, s.previous) for s in second.finalize()] == [({"growth": 0.25}, {"revenue": 80.0})]


def test_without_change_kpis_no_previous_window_is_kept() -> None:
    comb = Combiner(plan(), sources=1)
    comb.receive(0, T + MIN, [part(T, [1.0, 1.0, 1.0, 0.0])])
    [snap] = comb.finalize()
    assert (snap.previous, comb.last) == (None, {})


# -- several stage-1 partitions end to end ------------------------------------------------


def test_two_stage1_partitions_combine_to_the_single_process_result() -> None:
    p = make_plan(breakdowns=[["campaign"], ["channel"], []])
    e = Events("clicks:0")
    events: list[Routed] = []
    for i in range(40):
        ts = T + i * 7_000
        campaign = ("spring", "brand", "retarget")[i % 3]
        channel = ("search", "social")[i % 2]
        events.append(e.click(ts, cost=0.25 * (i % 5), campaign=campaign, channel=channel))
        events.append(e.impression(ts + 500, campaign=campaign, channel=channel))
    # route by campaign, as streams does, to two stage-1 partitions; every partition hears every watermark
    aggs = [PartitionAggregator(p, idle_ms=10_000) for _ in range(2)]
    comb = Combiner(p, sources=2)
    snapshots: list[Snapshot] = []
    for i in range(0, len(events), 6):
        batch = events[i : i + 6]
        for n, agg in enumerate(aggs):
            assert agg.apply([ev for ev in batch if zlib.crc32(ev[4]["campaign"].encode()) % 2 == n]) == []
            for ev in batch:
                agg.observe(ev[0], ev[3], None)
            partials = agg.advance(None)
            if partials is not None:
                comb.receive(n, agg.horizon, partials)
                snapshots += comb.finalize()
    for n, agg in enumerate(aggs):
        comb.receive(n, FOREVER, agg.advance(None, force=FOREVER) or [])
        snapshots += comb.finalize()
    single = list(run(p, events))
    assert by_key(snapshots) == by_key(single)
    assert len(single) == 5 * (3 + 2 + 1)  # five windows, three campaigns, two channels, one total
