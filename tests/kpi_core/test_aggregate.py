"""Stage 1: window assignment, lateness, offset-mark dedup, sessions and state round trips."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kpi_core.aggregate import FOREVER, NEVER, Partial, PartitionAggregator, Routed
from kpi_core.combine import Combiner
from kpi_core.plan import Plan
from kpi_core.results import Snapshot

from .helpers import MIN, SEC, T, Events, make_plan

Row = tuple[int, int, str, int, tuple[str, ...], tuple[float, ...]]

SESSION_MEASURES: dict[str, Any] = {
    "clicks": {"event": "click"},
    "pageviews": {"event": "pageview"},
    "sessions": {"event": "session"},
    "bounced": {"event": "session", "where": {"bounced": True}},
}
SESSION_KPIS: dict[str, Any] = {
    "bounce_rate": {"ratio": ["bounced", "sessions"], "direction": "lower"},
    "pages_per_click": {"ratio": ["pageviews", "clicks"]},
}


def session_plan(**overrides: Any) -> Plan:
    """Sessions with a 2m timeout, so the sessions phase closes inside a short test stream."""
    return make_plan(
        measures=SESSION_MEASURES,
        kpis=SESSION_KPIS,
        session_timeout="2m",
        breakdowns=[["campaign"], []],
        **overrides,
    )


def rows(partials: list[Partial] | None) -> list[Row]:
    assert partials is not None
    return [(p.window, p.start, p.phase, p.breakdown, p.group, tuple(p.vector)) for p in partials]


def step(agg: PartitionAggregator, batch: list[Routed]) -> tuple[list[Routed], list[Partial] | None]:
    """One batch as the live worker handles it in replay mode: apply, observe, advance."""
    late = agg.apply(batch)
    for ev in batch:
        agg.observe(ev[0], ev[3], None)
    return late, agg.advance(None)


def totals(agg: PartitionAggregator, phase: str = "events") -> dict[tuple[int, tuple[str, ...]], list[float]]:
    """Close everything and return the phase's vectors by (start, group) of breakdown 0."""
    out = agg.advance(None, force=FOREVER)
    assert out is not None
    return {(p.start, p.group): p.vector for p in out if p.phase == phase and p.breakdown == 0}


def collect(agg: PartitionAggregator, batches: list[list[Routed]]) -> list[Partial]:
    """Every partial a stream of batches yields, the final flush included."""
    out: list[Partial] = []
    for batch in batches:
        out += step(agg, batch)[1] or []
    return out + (agg.advance(None, force=FOREVER) or [])


def sessions_by_start(partials: list[Partial]) -> dict[tuple[int, tuple[str, ...]], list[float]]:
    return {(p.start, p.group): p.vector for p in partials if p.phase == "sessions" and p.breakdown == 0}


# -- windows and lateness ------------------------------------------------------------------


def test_events_land_in_their_windows() -> None:
    plan = make_plan()
    e = Events()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    late = agg.apply(
        [
            e.click(T, cost=0.5),  # exactly on the first boundary
            e.impression(T + MIN - 1),  # last ms of the first window
            e.click(T + MIN, cost=2.0),  # first ms of the second window
            e.impression(T + MIN + 1, campaign="brand"),
        ]
    )
    assert late == []
    assert totals(agg) == {
        (T, ("spring",)): [1.0, 1.0, 0.5, 0.0],
        (T + MIN, ("spring",)): [0.0, 1.0, 2.0, 0.0],
        (T + MIN, ("brand",)): [1.0, 0.0, 0.0, 0.0],
    }


def test_hopping_windows_count_an_event_in_each_window_that_contains_it() -> None:
    plan = make_plan(windows=[{"size": "1m", "step": "30s"}], breakdowns=[[]])
    e = Events()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    agg.apply([e.click(T + 45 * SEC), e.click(T + 75 * SEC)])
    out = agg.advance(None, force=FOREVER)
    assert [(r[1], r[5][1]) for r in rows(out)] == [(T, 1.0), (T + 30 * SEC, 2.0), (T + 60 * SEC, 1.0)]


def test_horizon_is_watermark_minus_lateness_and_closes_windows_at_their_end() -> None:
    plan = make_plan()
    e = Events()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    assert agg.horizon == NEVER
    late, out = step(agg, [e.click(T + 15 * SEC)])
    assert (late, rows(out)) == ([], [])
    assert agg.horizon == T + 5 * SEC
    # watermark T+69.999s: horizon T+59.999s, one ms short of the first window's end
    late, out = step(agg, [e.click(T + 69_999)])
    assert out is None  # no window boundary crossed
    assert agg.horizon == T + 59_999
    # watermark T+70s: horizon reaches T+60s and the first window closes
    late, out = step(agg, [e.impression(T + 70 * SEC)])
    assert rows(out) == [
        (0, T, "events", 0, ("spring",), (0.0, 1.0, 1.0, 0.0)),
        (0, T, "events", 1, (), (0.0, 1.0, 1.0, 0.0)),
    ]


def test_late_events_are_returned_and_not_counted() -> None:
    plan = make_plan()
    e = Events()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    step(agg, [e.click(T + 5 * SEC), e.click(T + 70 * SEC)])  # horizon T+60s: first window closed
    # offsets follow the order of the list, as they do on one source partition
    batch = [e.click(T + 59_999), e.click(T + 60 * SEC, cost=3.0), e.impression(T + 1 * SEC, campaign="brand")]
    late = agg.apply(batch)
    assert late == [batch[0], batch[2]]  # the middle one is in the first ms of the open window
    assert totals(agg) == {(T + MIN, ("spring",)): [0.0, 2.0, 4.0, 0.0]}


def test_out_of_order_events_within_lateness_count_in_their_own_window() -> None:
    plan = make_plan()
    e = Events()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    late = []
    for ev in [
        e.click(T + 55 * SEC),
        e.click(T + 65 * SEC),  # horizon T+55s: the first window is still open
        e.click(T + 50 * SEC, cost=2.0),  # 15 s out of order, but its window has not closed
        e.click(T + 69 * SEC),
        e.click(T + 59 * SEC, cost=4.0),  # 10 s out of order: still the first window
    ]:
        late += step(agg, [ev])[0]
    assert late == []
    assert totals(agg) == {
        (T, ("spring",)): [0.0, 3.0, 7.0, 0.0],
        (T + MIN, ("spring",)): [0.0, 2.0, 2.0, 0.0],
    }


def test_historical_timestamps_give_historical_windows() -> None:
    plan = make_plan()
    e = Events()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    # 2024-02-29T23:59:59.999Z and the next millisecond, 2024-03-01T00:00:00Z
    leap = 1_709_251_200_000
    agg.apply([e.click(leap - 1), e.click(leap)])
    assert sorted(totals(agg)) == [(leap - MIN, ("spring",)), (leap, ("spring",))]


# -- exactly-once dedup ----------------------------------------------------------------------


def test_the_same_events_applied_twice_count_once() -> None:
    plan = make_plan()
    e = Events()
    batch = [e.click(T + 1_000, cost=0.5), e.impression(T + 2_000), e.click(T + MIN, cost=1.0)]
    agg = PartitionAggregator(plan, idle_ms=10_000)
    assert agg.apply(batch) == []
    assert agg.apply(batch) == []
    assert agg.apply(batch[1:]) == []
    assert totals(agg) == {
        (T, ("spring",)): [1.0, 1.0, 0.5, 0.0],
        (T + MIN, ("spring",)): [0.0, 1.0, 1.0, 0.0],
    }


def test_the_same_offset_from_another_source_is_a_different_event() -> None:
    plan = make_plan()
    a, b = Events("clicks:0"), Events("clicks:1")
    agg = PartitionAggregator(plan, idle_ms=10_000)
    agg.apply([a.click(T + 1_000), b.click(T + 2_000)])  # both offset 0
    assert totals(agg) == {(T, ("spring",)): [0.0, 2.0, 2.0, 0.0]}


def test_a_replayed_page_view_does_not_grow_its_session() -> None:
    plan = session_plan()
    e = Events()
    pv = e.pageview(T + 1_000, "s1")
    agg = PartitionAggregator(plan, idle_ms=10_000)
    agg.apply([pv])
    agg.apply([pv])
    assert totals(agg, phase="sessions") == {(T, ("spring",)): [0.0, 1.0, 1.0, 1.0]}  # one bounced session


# -- sessions --------------------------------------------------------------------------------


def test_sessions_phase_closes_session_timeout_after_the_window() -> None:
    plan = session_plan()
    e = Events()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    step(agg, [e.pageview(T + 1_000, "a"), e.pageview(T + 2_000, "b"), e.pageview(T + 50_000, "b")])
    # the first window's events phase closes when the horizon passes T+1m
    late, out = step(agg, [e.click(T + 71 * SEC)])
    assert [(r[1], r[2], r[3]) for r in rows(out)] == [(T, "events", 0), (T, "events", 1)]
    # its sessions phase only when the horizon passes T+1m+2m
    late, out = step(agg, [e.click(T + 3 * MIN + 9_999)])
    assert [r[2] for r in rows(out) if r[1] == T] == []
    late, out = step(agg, [e.click(T + 3 * MIN + 10 * SEC)])
    assert [r for r in rows(out) if r[1] == T and r[2] == "sessions"] == [
        # a bounced, b not bounced (two page views)
        (0, T, "sessions", 0, ("spring",), (0.0, 3.0, 2.0, 1.0)),
        (0, T, "sessions", 1, (), (0.0, 3.0, 2.0, 1.0)),
    ]


def test_session_records_carry_duration_and_the_new_visitor_flag() -> None:
    plan = make_plan(
        breakdowns=[["device"], []],
        session_timeout="2m",
        measures={
            "sessions": {"event": "session"},
            "seconds": {"event": "session", "sum": "duration_s"},
            "pages": {"event": "session", "sum": "pageviews"},
            "new": {"event": "session", "where": {"new_visitor": True}},
            "landing_pricing": {"event": "session", "where": {"page": "/pricing"}},
        },
        kpis={"avg_duration": {"ratio": ["seconds", "sessions"], "unit": "seconds"}},
    )
    e = Events()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    agg.apply(
        [
            e.pageview(T + 1_000, "s1", page="/pricing", new_visitor=True, device="mobile"),
            e.pageview(T + 2_000, "s2", device="desktop"),
            e.pageview(T + 61_500, "s1", page="/checkout", device="tablet"),  # 60.5 s after its first page
        ]
    )
    out = agg.advance(None, force=FOREVER)
    by_group = {p.group: p.vector for p in out or [] if p.phase == "sessions"}
    # the session takes its attributes from its first page view: mobile, landing on /pricing
    assert by_group == {
        ("mobile",): [1.0, 60.5, 2.0, 1.0, 1.0],
        ("desktop",): [1.0, 0.0, 1.0, 0.0, 0.0],
        (): [2.0, 60.5, 3.0, 1.0, 1.0],
    }


def test_an_event_that_feeds_no_measure_opens_no_window() -> None:
    plan = make_plan()  # no measure over page views or leads
    e = Events()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    assert agg.apply([e.pageview(T + 1_000, "s1"), e.make("lead", T + 2_000, lead_id="l", stage="lead")]) == []
    assert agg.cells == {}
    assert agg.sessions == {}
    assert agg.advance(None, force=FOREVER) == []


def test_a_page_view_that_is_not_late_is_counted_in_a_session() -> None:
    plan = session_plan()
    e = Events()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    step(agg, [e.click(T + 30 * SEC)])  # horizon T+20s; the window [T, T+1m) is open
    late, _ = step(agg, [e.pageview(T + 15 * SEC, "s1")])
    assert late == []  # it was accepted ...
    by_phase = agg.advance(None, force=FOREVER)
    sessions = {(p.start, p.group): p.vector for p in by_phase or [] if p.phase == "sessions" and p.breakdown == 0}
    assert sessions == {(T, ("spring",)): [1.0, 1.0, 1.0, 1.0]}  # ... so its session must count


def test_an_out_of_order_page_view_bridging_two_sessions_merges_them() -> None:
    plan = session_plan()  # 2m timeout
    e = Events()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    out = collect(
        agg,
        [
            [e.pageview(T, "s1")],
            [e.pageview(T + 2 * MIN + 5 * SEC, "s1")],  # 2m5s later: a new session so far
            [e.pageview(T + 2 * MIN - 1 * SEC, "s1")],  # 6 s out of order, within lateness: bridges both
        ],
    )
    # one session of three page views, starting in the first window, not a bounce
    assert {k: v[2:] for k, v in sessions_by_start(out).items() if v[2]} == {(T, ("spring",)): [1.0, 0.0]}


def test_a_page_view_after_the_timeout_starts_a_new_session() -> None:
    plan = session_plan()  # 2m timeout
    e = Events()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    out = collect(agg, [[e.pageview(T, "s1")], [e.pageview(T + 2 * MIN, "s1")], [e.pageview(T + 4 * MIN + 1, "s1")]])
    # T and T+2m are within the timeout (inclusive); T+4m+1ms is 1 ms beyond it
    assert {k: v[2:] for k, v in sessions_by_start(out).items() if v[2]} == {
        (T, ("spring",)): [1.0, 0.0],
        (T + 4 * MIN, ("spring",)): [1.0, 1.0],
    }


# -- state round trip and crash recovery ------------------------------------------------------


def stream() -> list[list[Routed]]:
    """Batches over about eight minutes: clicks, page views and sessions, slightly out of order."""
    e = Events("page-views:0")
    c = Events("ad-clicks:0")
    return [
        [e.pageview(T + 1_000, "a"), c.click(T + 2_000, cost=0.5), e.pageview(T + 3_000, "b")],
        [e.pageview(T + 40_000, "b"), c.click(T + 35_000, cost=1.0, campaign="brand")],
        [c.click(T + 65_000), e.pageview(T + 61_000, "c", campaign="brand")],
        [e.pageview(T + 80_000, "a"), c.click(T + 125_000, cost=2.0)],
        [e.pageview(T + 130_000, "d"), c.click(T + 181_000)],
        [e.pageview(T + 240_000, "c", campaign="brand"), c.click(T + 245_000)],
        [e.pageview(T + 300_000, "e"), c.click(T + 360_000, campaign="brand")],
        [e.pageview(T + 420_000, "e"), c.click(T + 480_000)],
    ]


class Store:
    """A changelog-backed key/value table: values are serialized, as they would be on Kafka."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def persist(self, changes: list[tuple[str, Any]], limit: int | None = None) -> None:
        """Write the changes in order; with ``limit``, only that many: the process died mid-write."""
        for key, value in changes[:limit]:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = orjson.dumps(value)

    def restore(self, agg: PartitionAggregator | Combiner) -> None:
        for key, value in self.data.items():
            agg.load(key, orjson.loads(value))


def run_stage1(plan: Plan, batches: list[list[Routed]], agg: PartitionAggregator, store: Store | None = None) -> list[Row]:
    out: list[Row] = []
    for batch in batches:
        late, partials = step(agg, batch)
        assert late == []
        if partials is not None:
            out += rows(partials)
        if store is not None:
            store.persist(agg.changes())
    return out


def reference(plan: Plan) -> list[Row]:
    agg = PartitionAggregator(plan, idle_ms=10_000)
    out = run_stage1(plan, stream(), agg)
    return out + rows(agg.advance(None, force=FOREVER))


def test_uninterrupted_stream_yields_both_phases() -> None:
    out = reference(session_plan())
    # measures: clicks, pageviews, sessions, bounced
    assert {r[2:5]: r[5] for r in out if r[1] == T} == {
        ("events", 0, ("spring",)): (1.0, 3.0, 0.0, 0.0),
        ("events", 0, ("brand",)): (1.0, 0.0, 0.0, 0.0),
        ("events", 1, ()): (2.0, 3.0, 0.0, 0.0),
        # a: +1s and +80s, b: +3s and +40s: two sessions, neither bounced
        ("sessions", 0, ("spring",)): (1.0, 3.0, 2.0, 0.0),
        ("sessions", 0, ("brand",)): (1.0, 0.0, 0.0, 0.0),
        ("sessions", 1, ()): (2.0, 3.0, 2.0, 0.0),
    }
    # brand's c at +61s and +240s are 179 s apart, beyond the 2m timeout: two bounced sessions
    assert {r[1]: r[5][2:] for r in out if r[2:5] == ("sessions", 0, ("brand",)) and r[5][2]} == {
        T + MIN: (1.0, 1.0),
        T + 4 * MIN: (1.0, 1.0),
    }


def test_replayed_batches_that_were_stored_change_nothing() -> None:
    plan = session_plan()
    batches = stream()
    store = Store()
    before = PartitionAggregator(plan, idle_ms=10_000)
    out = run_stage1(plan, batches[:5], before, store)
    after = PartitionAggregator(plan, idle_ms=10_000)
    store.restore(after)
    for batch in batches[1:5]:  # input offsets were committed after the first batch only
        assert after.apply(batch) == []  # skipped: neither counted again nor reported late
        for ev in batch:
            after.observe(ev[0], ev[3], None)
        assert after.advance(None) is None
        assert [k for k, _ in after.changes() if not k.startswith('["w"')] == []
    out += run_stage1(plan, batches[5:], after, store)
    out += rows(after.advance(None, force=FOREVER))
    # the order of groups within one close follows dict order, which a restore may change
    assert sorted(out) == sorted(reference(plan))


def snapshots_through_a_crash(persisted: int, written: float, committed: int) -> list[Snapshot]:
    """Stage 1 dies while storing the changes of batch ``persisted`` (after sending its partials),
    having written only the fraction ``written`` of them; it restarts from the store and re-reads
    its input from batch ``committed``. Stage 2 keeps running throughout."""
    plan = session_plan()
    batches = stream()
    store = Store()
    combiner = Combiner(plan, sources=1)
    out: list[Snapshot] = []

    def send(agg: PartitionAggregator, partials: list[Partial] | None) -> None:
        if partials is not None:
            combiner.receive(0, agg.horizon, partials)
            out.extend(combiner.finalize())

    before = PartitionAggregator(plan, idle_ms=10_000)
    for i, batch in enumerate(batches[: persisted + 1]):
        send(before, step(before, batch)[1])
        changes = before.changes()
        store.persist(changes, None if i < persisted else round(written * len(changes)))
    after = PartitionAggregator(plan, idle_ms=10_000)
    store.restore(after)
    for batch in batches[committed:]:
        send(after, step(after, batch)[1])
    send(after, after.advance(None, force=FOREVER))
    return out


CRASHES = [
    # (batch being stored at the crash, fraction of its changes written, first batch re-read)
    (0, 0.0, 0),  # nothing stored at all
    (2, 1.0, 2),  # the batch fully stored, and re-read
    (2, 0.5, 2),  # half its changes stored: some cells have it, the rest and the watermark do not
    (2, 0.5, 0),  # the same, re-reading everything from the start
    (4, 0.3, 3),  # while the first sessions phase closes; one batch re-read
    (5, 0.9, 5),  # all but the watermark entry, which is written last
    (7, 0.0, 6),  # the last batch, nothing of it stored
]


@pytest.mark.parametrize(("persisted", "written", "committed"), CRASHES)
def test_a_crash_while_storing_state_changes_no_snapshot(persisted: int, written: float, committed: int) -> None:
    reference_run = snapshots_through_a_crash(len(stream()) - 1, 1.0, len(stream()))
    assert len(reference_run) > 20
    got = snapshots_through_a_crash(persisted, written, committed)
    assert sorted(got, key=lambda s: s.key) == sorted(reference_run, key=lambda s: s.key)


def test_the_watermark_entry_is_written_last() -> None:
    plan = session_plan()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    step(agg, stream()[0])
    keys = [k for k, _ in agg.changes()]
    assert keys[-1] == '["w"]'
    assert len(keys) > 3


def test_changes_round_trip_into_a_fresh_aggregator_gives_the_same_snapshots() -> None:
    plan = session_plan()
    batches = stream()
    store = Store()
    first = PartitionAggregator(plan, idle_ms=10_000)
    partials: list[Partial] = []
    for batch in batches[:4]:
        partials += step(first, batch)[1] or []
        store.persist(first.changes())
    second = PartitionAggregator(plan, idle_ms=10_000)
    store.restore(second)
    for batch in batches[4:]:
        partials += step(second, batch)[1] or []
    partials += second.advance(None, force=FOREVER) or []
    combiner = Combiner(plan, sources=1)
    combiner.receive(0, FOREVER, partials)
    restored = combiner.finalize()

    plain = PartitionAggregator(plan, idle_ms=10_000)
    partials = []
    for batch in batches:
        partials += step(plain, batch)[1] or []
    partials += plain.advance(None, force=FOREVER) or []
    combiner = Combiner(plan, sources=1)
    combiner.receive(0, FOREVER, partials)
    assert restored == combiner.finalize()
    assert len(restored) > 10


def test_closed_windows_are_deleted_from_the_store() -> None:
    plan = make_plan()
    e = Events()
    store = Store()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    step(agg, [e.click(T + 1_000)])
    store.persist(agg.changes())
    assert sorted(store.data) == [f'["c",0,{T},0,["spring"]]', f'["c",0,{T},1,[]]', '["w"]']
    step(agg, [e.click(T + 75_000)])
    store.persist(agg.changes())
    assert sorted(store.data) == [f'["c",0,{T + MIN},0,["spring"]]', f'["c",0,{T + MIN},1,[]]', '["w"]']
    assert orjson.loads(store.data['["w"]']) == {"latest": {"p0": T + 75_000}, "horizon": T + 65_000, "applied": {"p0": 1}, "live": [],
                                                    "slow": {}, "closed": {"events": T + 65_000}}
    assert orjson.loads(store.data[f'["c",0,{T + MIN},1,[]]']) == {"v": [0.0, 1.0, 1.0, 0.0], "m": {"p0": 1}}


def test_changes_are_empty_when_nothing_changed() -> None:
    plan = make_plan()
    e = Events()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    step(agg, [e.click(T + 1_000)])
    agg.changes()
    assert agg.changes() == []


def test_replayed_events_of_windows_closed_before_the_crash_are_not_reported_late() -> None:
    plan = make_plan()
    e = Events()
    batches = [[e.click(T + 1_000)], [e.click(T + 75_000)]]
    store = Store()
    agg = PartitionAggregator(plan, idle_ms=10_000)
    for batch in batches:
        step(agg, batch)
        store.persist(agg.changes())
    restored = PartitionAggregator(plan, idle_ms=10_000)
    store.restore(restored)
    # input offsets were committed before the first batch: both batches come again
    assert restored.apply(batches[0]) == []


# -- the columnar path (``_Columns``) against the per-event path ---------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_COLUMN_MEASURES: dict[str, Any] = {
    "impressions": {"event": "impression"},
    "clicks": {"event": "click"},
    "click_cost": {"event": "click", "sum": "cost"},
    "mobile_clicks": {"event": "click", "where": {"device": "mobile"}},
    "pageviews": {"event": "pageview"},
    "visitors": {"event": "pageview", "distinct": "visitor_id"},
}
_column_event = st.tuples(
    st.sampled_from(["impression", "click", "pageview"]),
    st.integers(0, 9 * MIN),  # ts offset
    st.sampled_from(["a", "b", "c"]),  # campaign
    st.sampled_from(["mobile", "desktop"]),
    st.floats(0.01, 3.0, allow_nan=False),  # cost: sums whose order shows in the last bits
    st.sampled_from(["s0", "s1"]),  # source partition
)


def _cells(agg: PartitionAggregator) -> dict[Any, Any]:
    return {(key, g): ([x.estimate() if hasattr(x, "estimate") else x for x in c.v], dict(c.m))
            for key, window in agg.cells.items() for g, c in window.items()}


@settings(max_examples=60, deadline=None)
@given(raw=st.lists(_column_event, min_size=1, max_size=150), batch=st.integers(1, 40),
       hopping=st.booleans())
def test_the_columnar_path_adds_exactly_what_the_per_event_path_adds(raw: list[Any], batch: int, hopping: bool) -> None:
    # The per-event path is forced by marking every offset as restored from storage (how a
    # replay after a crash goes); both aggregators must hold the same floats, bit for bit,
    # the same sketches and the same marks, after every batch.
    windows = [{"size": "2m", "step": "1m"}, {"size": "5m"}] if hopping else [{"size": "1m"}, {"size": "5m"}]
    plan = make_plan(windows=windows, measures=_COLUMN_MEASURES, kpis={"ctr": {"ratio": ["clicks", "impressions"]}},
                     breakdowns=[["campaign"], ["device"], []], allowed_lateness="2m")
    offsets: dict[str, int] = {}
    events: list[Routed] = []
    for etype, dt, campaign, device, cost, src in sorted(raw, key=lambda r: r[1]):
        offsets[src] = offsets.get(src, -1) + 1
        data: dict[str, Any] = {"campaign": campaign, "channel": "search", "device": device}
        if etype == "click":
            data["cost"] = cost
        if etype == "pageview":
            data.update(visitor_id=f"v{int(cost * 10)}", session_id="x")
        events.append((src, offsets[src], etype, T + dt, data))
    columnar = PartitionAggregator(plan, idle_ms=0)
    per_event = PartitionAggregator(plan, idle_ms=0)
    per_event._restored = {"s0": 10**9, "s1": 10**9}
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        assert columnar.apply(chunk) == per_event.apply(chunk)
        assert _cells(columnar) == _cells(per_event)
        assert sorted(columnar.changes()) == sorted(per_event.changes())
        for agg in (columnar, per_event):
            for ev in chunk:
                agg.observe(ev[0], ev[3], None)
        # Partials may come in another order (cells are created per breakdown, not per event);
        # stage 2 sorts them by group.
        assert sorted(rows(columnar.advance(None) or []), key=lambda r: r[:5]) == \
            sorted(rows(per_event.advance(None) or []), key=lambda r: r[:5])
    assert _cells(columnar) == _cells(per_event)


def test_offsets_at_or_below_a_restored_mark_take_the_per_event_path() -> None:
    # A cell stored with offset 5 of p0, but a watermark entry stored before it (applied 3):
    # re-reading offsets 4..6 must count 6 only, in every cell, as before the columnar path.
    plan = make_plan()
    first = PartitionAggregator(plan, idle_ms=0)
    ev = Events("p0")
    batch = [ev.impression(T + i * SEC) for i in range(7)]
    first.apply(batch[:6])
    stored = dict(first.changes())
    restarted = PartitionAggregator(plan, idle_ms=0)
    for key, value in stored.items():
        if value is not None and not key.startswith('["w"'):
            restarted.load(key, value)
    restarted.load('["w"]', {"latest": {}, "horizon": NEVER, "applied": {"p0": 3}})
    restarted.apply(batch[4:])
    cell = restarted.cells[(0, T)][(0, ("spring",))]
    assert cell.v[0] == 7.0 and cell.m == {"p0": 6}
