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


def test_idle_source_is_excluded_after_idle_ms_while_its_router_is_heard() -> None:
    wm = Watermark(idle_ms=10)
    _report(wm, 0.0, {"slow": 100, "fast": 900})
    _report(wm, 8.0, {"slow": 100, "fast": 950})
    # exactly idle_ms after its last progress, the slow source still holds the watermark back
    assert wm.current(10.0) == 100
    # one ms later it is idle and only the fast source counts
    assert wm.current(11.0) == 950


def test_a_source_with_a_backlog_is_never_idle() -> None:
    wm = Watermark(idle_ms=10)
    _report(wm, 0.0, {"slow": 100, "fast": 900})
    _report(wm, 15.0, {"slow": 100, "fast": 950}, backlog=("slow",))  # slow hasn't been read for a while
    assert wm.current(20.0) == 100
    _report(wm, 21.0, {"slow": 100, "fast": 960})  # caught up, no progress since 0: idle
    assert wm.current(21.0) == 960


def test_when_the_router_goes_silent_nothing_is_assumed() -> None:
    wm = Watermark(idle_ms=10)
    _report(wm, 0.0, {"a": 100, "b": 200})
    # a and b make no progress, but no report says they are caught up after 10 ms:
    # a stalled router must not let the wall clock close windows over unread data
    assert wm.current(5.0) == 100
    assert wm.current(1_000.0) == 100
    _report(wm, 1_000.0, {"a": 100, "b": 200})  # heard again, both caught up and quiet since 0
    assert wm.current(1_000.0) == 200 + 1_000 - 10


def test_an_idle_source_that_progresses_again_holds_the_watermark_again() -> None:
    wm = Watermark(idle_ms=10)
    _report(wm, 0.0, {"slow": 100, "fast": 800})
    _report(wm, 15.0, {"slow": 100, "fast": 900})
    assert wm.current(15.0) == 900
    _report(wm, 16.0, {"slow": 120, "fast": 900})
    assert wm.current(16.0) == 120


def test_all_idle_advances_with_the_wall_clock() -> None:
    wm = Watermark(idle_ms=10)
    _report(wm, 0.0, {"a": 100, "b": 150})
    _report(wm, 5.0, {"a": 100, "b": 200})
    _report(wm, 15.0, {"a": 100, "b": 200})
    # a is idle, b is not yet
    assert wm.current(15.0) == 200
    _report(wm, 20.0, {"a": 100, "b": 200})
    # both idle: b's latest plus how long everything has been quiet beyond idle_ms
    assert wm.current(20.0) == 205
    _report(wm, 1_015.0, {"a": 100, "b": 200})
    assert wm.current(1_015.0) == 1_200


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


def test_restored_sources_hold_until_heard_and_are_idle_only_from_then() -> None:
    wm = Watermark(idle_ms=10)
    # as after a restart: latest restored without a wall-clock time
    wm.observe("a", 100, now=None)
    wm.observe("b", 200, now=None)
    assert wm.current(5_000.0) == 100  # not heard from yet: both hold
    _report(wm, 5_000.0, {"a": -1, "b": -1})  # the new router has read nothing yet
    assert wm.current(5_010.0) == 100
    _report(wm, 5_020.0, {"a": -1, "b": -1})
    assert wm.current(5_020.0) == 210  # both idle for 10 ms beyond idle_ms


def test_only_progress_counts_as_activity() -> None:
    wm = Watermark(idle_ms=10)
    _report(wm, 0.0, {"stuck": 100, "moving": 500})
    _report(wm, 9.0, {"stuck": 100, "moving": 600})  # the same time again: not progress
    assert wm.current(10.0) == 100
    assert wm.current(11.0) == 600  # stuck has made no progress for 11 ms: idle


def test_a_known_source_without_data_holds_the_watermark_back_until_idle() -> None:
    wm = Watermark(idle_ms=10)
    _report(wm, 0.0, {"orders:0": -1, "clicks:0": 5_000})  # orders:0 assigned, nothing delivered yet
    _report(wm, 5.0, {"orders:0": -1, "clicks:0": 5_500})
    assert wm.current(10.0) == -1
    assert wm.current(11.0) == 5_500  # orders:0 has been silent for 11 ms
    _report(wm, 12.0, {"orders:0": 4_000, "clicks:0": 5_500})
    assert wm.current(12.0) == 4_000


def test_a_caught_up_live_source_stops_holding_at_once() -> None:
    # event time ≈ wall time: the sparse source's next event will be stamped about now
    wm = Watermark(idle_ms=2_000)
    now = 1_700_000_000_000.0
    _report(wm, now - 1_000, {"orders": int(now) - 1_500, "views": int(now) - 1_000})
    _report(wm, now, {"orders": int(now) - 1_500, "views": int(now) - 100})
    assert wm.current(now) == int(now) - 100  # orders is caught up and live: not waited for
    _report(wm, now, {"orders": int(now) - 1_500, "views": int(now) - 100}, backlog=("orders",))
    assert wm.current(now) == int(now) - 1_500  # with a backlog it holds, live or not


def test_a_caught_up_source_replaying_old_data_keeps_the_idle_grace() -> None:
    # event time far behind the wall clock (a replay into Kafka): idle_ms still applies
    wm = Watermark(idle_ms=2_000)
    now = 1_700_000_000_000.0
    old = 1_600_000_000_000
    _report(wm, now, {"orders": old, "views": old + 900})
    assert wm.current(now + 2_000) == old  # exactly idle_ms after its progress it still holds
    _report(wm, now + 1_500, {"orders": old, "views": old + 1_400})  # views keeps progressing
    _report(wm, now + 2_001, {"orders": old, "views": old + 1_400})
    assert wm.current(now + 2_001) == old + 1_400  # now orders is idle
