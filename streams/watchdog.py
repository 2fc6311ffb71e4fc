"""Notice a stalled Faust table recovery and get it moving again.

Faust's recovery of a worker's *retained* partitions has been seen (about once in 25 rebalances in
the test suite, never on demand) to wait for changelog records the consumer never delivers:
``No event received for active tp … since recovery start`` every 5 s, forever, and the worker never
reports ready (docs/reliability.md). It is inside Faust, not in kpimon's state; what clears it is a
new assignment, which restarts recovery from freshly read positions.

The watchdog only decides; the worker acts. While recovery has changelog records still to read and
their count has not moved for ``stall_after`` seconds, it answers ``REJOIN`` (the worker asks the
group to rebalance). After ``max_rejoins`` rejoins that did not help it answers ``EXIT``: the worker
stops at once and its supervisor restarts it, which is always safe because every stage's state is
built to survive kill -9 (docs/reliability.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Action(Enum):
    WAIT = "wait"
    REJOIN = "rejoin"
    EXIT = "exit"


@dataclass(slots=True)
class RecoveryWatchdog:
    stall_after: float = 20.0  # Faust itself warns after 5 s without a record; 20 s is well past slow
    max_rejoins: int = 3
    rejoins: int = 0
    _since: float | None = None  # when the current stretch without progress began
    _remaining: int | None = None

    def observe(self, now: float, recovering: bool, remaining: int) -> Action:
        """Judge one look at recovery: is it running, and how many changelog records are left."""
        if not recovering or remaining <= 0:
            self._since = self._remaining = None
            if not recovering:
                self.rejoins = 0  # recovery finished: a later stall starts afresh
            return Action.WAIT
        if self._since is None or remaining != self._remaining:
            self._since, self._remaining = now, remaining
            return Action.WAIT
        if now - self._since < self.stall_after:
            return Action.WAIT
        self._since = now  # the rejoin gets its own stall_after to show progress
        if self.rejoins >= self.max_rejoins:
            return Action.EXIT
        self.rejoins += 1
        return Action.REJOIN
