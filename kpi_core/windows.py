"""Event-time window maths and the watermark. Pure functions of timestamps."""

from __future__ import annotations


def window_starts(ts: int, size: int, step: int) -> range:
    """Starts of every window ``[start, start + size)`` that contains ``ts``.

    Tumbling windows (``step == size``) give exactly one start; hopping windows
    give ``size // step`` of them, oldest first.
    """
    last = ts - ts % step
    return range(last - size + step, last + step, step)


#: How long a router's last report is trusted. Routers report at least every 0.5 s
#: (streams/router.py); a report older than this means the router is stalled,
#: busy or dead, and nothing it said about backlogs still holds.
ROUTER_SILENCE_MS = 2_000
#: A report sent (by the router's clock) longer ago than this, plus the silence, is
#: not believed even when it has just been read: stage 1 is far behind its input.
#: Generous, so hosts' clocks may disagree by that much without stalling anything.
MAX_REPORT_AGE_MS = 30_000


class Watermark:
    """How far event time has certainly progressed, across several sources.

    Each source (one partition of one input topic) reports the largest event time
    it has delivered. The watermark is the minimum over the sources, so one topic
    read ahead of another does not make the other's events look late.

    The wall clock may stop a source from holding the watermark only where that
    cannot turn data still to come into late data:

    - A source whose latest event was *live* (reached us within ``idle_ms`` of its
      own event time) and that has no backlog stops holding at once: whatever it
      sends next is stamped about now, ahead of any window about to close.
    - A source that has never delivered an event (-1) stops holding once it has
      had no backlog for ``idle_ms``, so an unused topic does not stall everything.
    - A source carrying *historical* (not live) data always holds the watermark at
      its latest event time, idle or not: a backfill whose producer pauses, for
      seconds or hours, resumes where it stopped and loses nothing. The trailing
      windows of a backfill close when newer data arrives on every such source.
    - When no source holds (every one is live and caught up, or empty), event time
      is assumed to advance with the wall clock once all have been quiet for
      ``idle_ms``, so a silent live stream still closes its windows.

    "No backlog" is only believed from a router report read at most
    ``ROUTER_SILENCE_MS`` ago: a router that stops reporting (stalled, busy or
    killed) makes its sources hold from then on. A report the router sent more than
    ``MAX_REPORT_AGE_MS`` before it was read is not believed at all.

    Whether a source is live survives a restart (``live_sources`` is stored with the
    state), so a quiet live source does not turn into a historical one, holding
    everything, after every rebalance.
    Without a wall clock (``now=None``, as in replay) every source counts.
    """

    __slots__ = ("idle_ms", "silence_ms", "latest", "seen_at", "backlog", "heard_at")

    def __init__(self, idle_ms: int, silence_ms: int = ROUTER_SILENCE_MS) -> None:
        self.idle_ms = idle_ms
        self.silence_ms = silence_ms
        self.latest: dict[str, int] = {}  # source -> largest event time seen
        self.seen_at: dict[str, float] = {}  # source -> wall-clock ms it last progressed
        self.backlog: set[str] = set()  # sources with messages not yet read, as last reported
        self.heard_at: dict[str, float] = {}  # source -> wall-clock ms its router's last believed report was read

    def observe(self, source: str, ts: int, now: float | None) -> None:
        """A source reports its largest event time so far; -1 means it has delivered nothing yet."""
        if source not in self.latest or ts > self.latest[source]:
            self.latest[source] = ts
            if now is not None:
                self.seen_at[source] = now

    def report(self, now: float, sources: set[str], backlog: set[str], sent_at: float | None = None) -> None:
        """A router's word on the sources it reads, sent at ``sent_at``: which still have messages to read."""
        fresh = sent_at is None or now - sent_at <= self.silence_ms + MAX_REPORT_AGE_MS
        for src in sources:
            if fresh:
                self.heard_at[src] = now
            self.seen_at.setdefault(src, now)  # e.g. restored from storage: idle only from now on
        if fresh:
            self.backlog = (self.backlog - sources) | backlog
        else:
            self.backlog |= sources  # an old report vouches for nothing

    def live_sources(self) -> list[str]:
        """Sources whose latest event arrived live (stored, so a restart keeps the judgement)."""
        return sorted(src for src, ts in self.latest.items() if self._live(src, ts, self.idle_ms))

    def restore_live(self, source: str) -> None:
        """Mark a restored source as having arrived live: as if seen when it was stamped."""
        ts = self.latest.get(source, -1)
        if ts >= 0:
            self.seen_at.setdefault(source, float(ts))

    def _live(self, src: str, ts: int, idle: int) -> bool:
        """Its latest event reached us within ``idle_ms`` of its own event time."""
        seen = self.seen_at.get(src)
        return seen is not None and ts >= 0 and abs(seen - ts) <= idle

    def holds(self, src: str, now: float) -> bool:
        """Whether one source holds the watermark back at its latest event time (see the class doc)."""
        if now - self.heard_at.get(src, -self.silence_ms - 1.0) > self.silence_ms or src in self.backlog:
            return True  # unread input, or no fresh word that there is none
        ts = self.latest[src]
        if ts < 0:
            return now - self.seen_at.get(src, now) <= self.idle_ms
        return not self._live(src, ts, self.idle_ms)

    def holders(self, now: float | None, wm: int | None = None) -> set[str]:
        """The sources holding the watermark where it is (empty when event time follows the clock).

        ``wm``: ``current(now)``, when the caller has it already.
        """
        wm = self.current(now) if wm is None else wm
        if wm is None:
            return set()
        return {src for src, ts in self.latest.items() if ts == wm and (now is None or self.holds(src, now))}

    def current(self, now: float | None) -> int | None:
        """The watermark in epoch ms, or None before any event was seen."""
        if not self.latest:
            return None
        if now is None:
            return min(self.latest.values())
        holding = [ts for src, ts in self.latest.items() if self.holds(src, now)]
        if holding:
            return min(holding)
        quiet_for = now - max(self.seen_at.values(), default=now) - self.idle_ms
        return max(self.latest.values()) + max(0, int(quiet_for))
