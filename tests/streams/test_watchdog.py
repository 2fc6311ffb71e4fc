"""The recovery watchdog's judgement: progress resets it, a stall earns rejoins, then an exit."""

from __future__ import annotations

from streams.watchdog import Action, RecoveryWatchdog


def test_progress_or_nothing_left_never_triggers() -> None:
    w = RecoveryWatchdog(stall_after=20)
    # Records keep being read: the count moves, however slowly.
    assert [w.observe(t, True, 1000 - t) for t in range(0, 200, 5)] == [Action.WAIT] * 40
    # Nothing left to read (recovery waiting on something else is not this stall).
    assert [w.observe(t, True, 0) for t in range(200, 400, 5)] == [Action.WAIT] * 40
    assert [w.observe(t, False, 7) for t in range(400, 600, 5)] == [Action.WAIT] * 40
    assert w.rejoins == 0


def test_a_stall_gets_a_rejoin_per_stall_after_then_an_exit() -> None:
    w = RecoveryWatchdog(stall_after=20, max_rejoins=2)
    seen = [(t, w.observe(t, True, 42)) for t in range(0, 100, 2)]
    acted = [(t, a) for t, a in seen if a is not Action.WAIT]
    assert acted == [(20, Action.REJOIN), (40, Action.REJOIN), (60, Action.EXIT), (80, Action.EXIT)]


def test_progress_after_a_rejoin_restarts_the_clock_and_a_finished_recovery_forgets_the_rejoins() -> None:
    w = RecoveryWatchdog(stall_after=20, max_rejoins=1)
    assert w.observe(0, True, 42) is Action.WAIT
    assert w.observe(20, True, 42) is Action.REJOIN
    assert w.observe(30, True, 41) is Action.WAIT  # the rejoin helped: records move again
    assert w.observe(49, True, 41) is Action.WAIT
    assert w.observe(50, True, 41) is Action.EXIT  # stalled again, rejoins used up
    w.observe(60, False, 0)  # recovery completed
    assert w.rejoins == 0
    assert w.observe(100, True, 9) is Action.WAIT
    assert w.observe(120, True, 9) is Action.REJOIN
