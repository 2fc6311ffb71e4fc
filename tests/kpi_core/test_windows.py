"""Window maths and the watermark: pure functions of timestamps (and an injected clock)."""

from __future__ import annotations

import pytest

from kpi_core.windows import Watermark, window_starts

T = 1_714_564_800_000  # 2024-05-01T12:00:00Z, a multiple of every size below
M = 60_000

WINDOW_STARTS = [
    # tumbling 1m: a time inside the first minute
    (T + 30_000, M, M, [T]),
    # tumbling 1m: exactly on a boundary belongs to the window starting there
    (T + M, M, M, [T + M]),
    # tumbling 1m: the last millisecond of a window
    (T + M - 1, M, M, [T]),
    # tumbling 1m at the epoch itself
    (0, M, M, [0]),
    # tumbling 1h: historical 2024 time one hour and one ms past T
    (T + 3_600_001, 3_600_000, 3_600_000, [T + 3_600_000]),
    # hopping 1m every 30s: two windows, oldest first
    (T + 45_000, M, 30_000, [T, T + 30_000]),
    # hopping 1m every 30s on a step boundary: the window ending there is excluded, the one starting there included
    (T + 30_000, M, 30_000, [T, T + 30_000]),
    # hopping 1m every 30s, one ms before a boundary
    (T + 29_999, M, 30_000, [T - 30_000, T]),
    # hopping 1m every 20s: three windows
    (T + 5_000, M, 20_000, [T - 40_000, T - 20_000, T]),
    # hopping 2m every 1m on a boundary
    (T + 2 * M, 2 * M, M, [T + M, T + 2 * M]),
]


@pytest.mark.parametrize(("ts", "size", "step", "starts"), WINDOW_STARTS)
def test_window_starts(ts: int, size: int, step: int, starts: list[int]) -> None:
    got = list(window_starts(ts, size, step))
    assert got == starts
    assert all(s <= ts < s + size for s in got)  # every window really contains ts


# -- watermark -----------------------------------------------------------------------


def test_none_before_any_event() -> None:
    wm = Watermark(idle_ms=10)
    assert wm.current(None) is None
    assert wm.current(1_000.0) is None


def _report(wm: Watermark, now: float, progress: dict[str, int], backlog: tuple[str, ...] = ()) -> None:
    """One router report, as stage 1 receives it with every bundle or heartbeat."""
    for src, ts in progress.items():
        wm.observe(src, ts, now)
    wm.report(now, set(progress), set(backlog))


def test_min_over_active_sources() -> None:
    wm = Watermark(idle_ms=10)
    _report(wm, 0.0, {"a": 500, "b": 300})
    assert wm.current(5.0) == 300
    _report(wm, 6.0, {"a": 500, "b": 700})
    assert wm.current(8.0) == 500


def test_a_source_never_goes_back_in_event_time() -> None:
    wm = Watermark(idle_ms=10)
    _report(wm, 0.0, {"a": 500})
    _report(wm, 1.0, {"a": 200})  # an out-of-order event
    assert wm.latest == {"a": 500}
    assert wm.current(1.0) == 500


NOW = 1_700_000_000_000.0  # the wall clock in the tests below: event times near it are live
OLD = 1_600_000_000_000  # historical event time, far behind the wall clock


def test_a_caught_up_historical_source_holds_the_watermark_however_long_it_is_quiet() -> None:
    # A backfill whose producer pauses: what it sends next continues from where it stopped,
    # so the wall clock must not close windows over it, after seconds or hours.
    wm = Watermark(idle_ms=10)
    _report(wm, NOW, {"slow": OLD + 100, "fast": OLD + 900})
    for later in (11.0, 1_000.0, 3_600_000.0):
        _report(wm, NOW + later, {"slow": OLD + 100, "fast": OLD + 900})
        assert wm.current(NOW + later) == OLD + 100


def test_every_source_quiet_with_historical_data_does_not_follow_the_wall_clock() -> None:
    wm = Watermark(idle_ms=10)
    _report(wm, NOW, {"a": OLD + 100, "b": OLD + 150})
    _report(wm, NOW + 300_000, {"a": OLD + 100, "b": OLD + 150})  # five minutes of silence
    assert wm.current(NOW + 300_000) == OLD + 100


def test_a_source_with_a_backlog_always_holds() -> None:
    wm = Watermark(idle_ms=2_000)
    _report(wm, NOW, {"orders": int(NOW) - 1_500, "views": int(NOW) - 100}, backlog=("orders",))
    assert wm.current(NOW + 5_000) == int(NOW) - 1_500
    _report(wm, NOW + 100, {"orders": int(NOW) - 1_500, "views": int(NOW) - 100})  # caught up, and live
    assert wm.current(NOW + 100) == int(NOW) - 100


def test_a_router_that_stops_reporting_makes_its_sources_hold_from_then_on() -> None:
    # Live sources, caught up: they do not hold while their router vouches for them...
    wm = Watermark(idle_ms=2_000, silence_ms=2_000)
    _report(wm, NOW, {"orders": int(NOW) - 1_500, "views": int(NOW) - 100})
    assert wm.current(NOW) == int(NOW) - 100
    assert wm.current(NOW + 2_000) == int(NOW) - 100
    # ...and hold as soon as its last word is older than silence_ms: it may have died with input unread.
    assert wm.current(NOW + 2_001) == int(NOW) - 1_500


def test_a_report_read_long_after_it_was_sent_vouches_for_nothing() -> None:
    # Stage 1 reading its input 40 s behind: a "no backlog" sent then says nothing about now.
    wm = Watermark(idle_ms=2_000, silence_ms=2_000)
    for src, ts in {"orders": int(NOW) - 1_500, "views": int(NOW) - 1_100}.items():
        wm.observe(src, ts, NOW)
    wm.report(NOW, {"orders", "views"}, set(), sent_at=NOW - 40_000)
    assert wm.current(NOW) == int(NOW) - 1_500
    # a few seconds behind (or a router clock a few seconds off) is still believed
    wm.report(NOW + 10, {"orders", "views"}, set(), sent_at=NOW - 5_000)
    assert wm.current(NOW + 10) == int(NOW) - 1_100


def test_an_old_report_cannot_clear_a_backlog() -> None:
    wm = Watermark(idle_ms=2_000, silence_ms=2_000)
    for src, ts in {"orders": int(NOW) - 1_500, "views": int(NOW) - 1_100}.items():
        wm.observe(src, ts, NOW)
    wm.report(NOW, {"orders", "views"}, {"orders"}, sent_at=NOW)
    wm.report(NOW + 1, {"orders", "views"}, set(), sent_at=NOW - 60_000)  # a stale "no backlog"
    assert wm.current(NOW + 1) == int(NOW) - 1_500


def test_a_report_is_trusted_for_silence_ms_from_when_it_was_read() -> None:
    wm = Watermark(idle_ms=2_000, silence_ms=2_000)
    wm.observe("views", int(NOW) - 100, NOW)
    wm.observe("orders", int(NOW) - 3_000, NOW - 2_000)
    wm.report(NOW, {"views", "orders"}, set(), sent_at=NOW + 60_000)  # the router's clock is a minute ahead
    assert wm.current(NOW + 2_000) == int(NOW) - 100
    assert wm.current(NOW + 2_001) == int(NOW) - 3_000  # from silence_ms after reading it, both hold


def test_an_idle_live_source_that_progresses_again_holds_the_watermark_again() -> None:
    wm = Watermark(idle_ms=10)
    _report(wm, NOW, {"a": int(NOW) - 5, "b": int(NOW) - 50})
    _report(wm, NOW + 100, {"a": int(NOW) - 5, "b": int(NOW) + 95})
    # a is live and caught up, b is live and caught up: nobody holds, the clock moves event time
    assert wm.current(NOW + 100) == int(NOW) + 95
    _report(wm, NOW + 200, {"a": int(NOW) - 5, "b": int(NOW) + 95}, backlog=("a",))
    assert wm.current(NOW + 200) == int(NOW) - 5


def test_all_live_sources_quiet_advance_with_the_wall_clock() -> None:
    wm = Watermark(idle_ms=10)
    _report(wm, NOW, {"a": int(NOW) - 5, "b": int(NOW)})
    # both caught up and live: b's latest plus how long everything has been quiet beyond idle_ms
    _report(wm, NOW + 20, {"a": int(NOW) - 5, "b": int(NOW)})
    assert wm.current(NOW + 20) == int(NOW) + 10
    _report(wm, NOW + 1_010, {"a": int(NOW) - 5, "b": int(NOW)})
    assert wm.current(NOW + 1_010) == int(NOW) + 1_000


def test_a_mixed_stream_waits_for_its_historical_source() -> None:
    wm = Watermark(idle_ms=10)
    _report(wm, NOW, {"live": int(NOW), "backfill": OLD})
    _report(wm, NOW + 1_000, {"live": int(NOW), "backfill": OLD})
    assert wm.current(NOW + 1_000) == OLD


def test_replay_mode_counts_every_source_as_active() -> None:
    wm = Watermark(idle_ms=10)
    wm.observe("a", 100, now=None)
    wm.observe("b", 200, now=None)
    assert wm.current(None) == 100
    wm.observe("a", 400, now=None)
    assert wm.current(None) == 200


def test_replay_mode_ignores_wall_clock_idleness() -> None:
    wm = Watermark(idle_ms=10)
    wm.observe("a", 100, now=0.0)
    wm.observe("b", 200, now=1_000_000.0)
    assert wm.current(None) == 100


def test_restored_sources_hold_until_heard() -> None:
    wm = Watermark(idle_ms=10)
    # as after a restart: latest restored without a wall-clock time
    wm.observe("a", int(NOW) - 3, now=None)
    wm.observe("b", int(NOW) - 2, now=None)
    assert wm.current(NOW) == int(NOW) - 3  # not heard from yet: both hold
    _report(wm, NOW, {"a": -1, "b": -1})  # the new router reports them caught up
    # restored times are judged live against when they were first heard of again
    assert wm.current(NOW) == int(NOW) - 2


def test_a_restored_live_source_stays_live() -> None:
    # After a rebalance the state is reloaded: a quiet live source must not turn historical.
    wm = Watermark(idle_ms=2_000)
    wm.observe("orders", int(NOW) - 60_000, None)  # last order a minute ago, live when it came
    wm.observe("views", int(NOW) - 100, None)
    wm.restore_live("orders")
    wm.restore_live("views")
    _report(wm, NOW, {"orders": -1, "views": -1})
    assert wm.current(NOW) == int(NOW) - 100  # nobody holds: quiet for less than idle_ms since views' last event


def test_restored_historical_sources_keep_holding_when_heard() -> None:
    wm = Watermark(idle_ms=10)
    wm.observe("a", OLD + 100, now=None)
    wm.observe("b", OLD + 200, now=None)
    _report(wm, NOW, {"a": -1, "b": -1})
    assert wm.current(NOW + 60_000) == OLD + 100  # its router's report is a minute old, too
    _report(wm, NOW + 60_000, {"a": -1, "b": -1})
    assert wm.current(NOW + 60_000) == OLD + 100


def test_a_known_source_without_data_holds_the_watermark_back_until_idle() -> None:
    wm = Watermark(idle_ms=10)
    _report(wm, NOW, {"orders:0": -1, "clicks:0": OLD + 5_000})  # orders:0 assigned, nothing delivered yet
    _report(wm, NOW + 5, {"orders:0": -1, "clicks:0": OLD + 5_500})
    assert wm.current(NOW + 10) == -1
    assert wm.current(NOW + 11) == OLD + 5_500  # orders:0 has had no backlog for 11 ms
    _report(wm, NOW + 12, {"orders:0": OLD + 4_000, "clicks:0": OLD + 5_500})
    assert wm.current(NOW + 12) == OLD + 4_000


def test_a_caught_up_live_source_stops_holding_at_once() -> None:
    # event time ≈ wall time: the sparse source's next event will be stamped about now
    wm = Watermark(idle_ms=2_000)
    now = NOW
    _report(wm, now - 1_000, {"orders": int(now) - 1_500, "views": int(now) - 1_000})
    _report(wm, now, {"orders": int(now) - 1_500, "views": int(now) - 100})
    assert wm.current(now) == int(now) - 100  # orders is caught up and live: not waited for
    _report(wm, now, {"orders": int(now) - 1_500, "views": int(now) - 100}, backlog=("orders",))
    assert wm.current(now) == int(now) - 1_500  # with a backlog it holds, live or not


def test_holders_name_the_sources_at_the_watermark() -> None:
    wm = Watermark(idle_ms=10)
    _report(wm, NOW, {"orders:0": OLD + 100, "clicks:0": OLD + 900, "clicks:1": OLD + 100})
    assert wm.holders(NOW) == {"orders:0", "clicks:1"}
    assert wm.holders(None) == {"orders:0", "clicks:1"}
    live = Watermark(idle_ms=2_000)
    _report(live, NOW, {"views": int(NOW) - 100})
    assert live.holders(NOW) == set()  # live and caught up: event time follows the clock, nobody holds
