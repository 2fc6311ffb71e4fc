"""Event-time window maths and the watermark. Pure functions of timestamps."""

from __future__ import annotations


def window_starts(ts: int, size: int, step: int) -> range:
    """Starts of every window ``[start, start + size)`` that contains ``ts``.

    Tumbling windows (``step == size``) give exactly one start; hopping windows
    give ``size // step`` of them, oldest first.
    """
    last = ts - ts % step
    return range(last - size + step, last + step, step)


class Watermark:
    """How far event time has certainly progressed, across several sources.

    Each source (one partition of one input topic) reports the largest event time
    it has delivered. The watermark is the minimum over the sources, so one topic
    read ahead of another does not make the other's events look late; a source
    known to exist but without data yet (-1) holds it back too.

    Idleness, on the wall clock, so a quiet stream still closes its windows: a source
    that has no backlog left (the router says so in every report) and has not
    progressed for ``idle_ms`` stops holding the watermark; when every source is
    idle, event time is assumed to advance with the wall clock. A caught-up source
    whose latest event was *live* (read within ``idle_ms`` of its event time) stops holding
    it at once: whatever it sends next is stamped about now, ahead of any window
    about to close, so waiting for it only delays every alert by ``idle_ms`` (the
    benchmark's close → Slack p50 was the idle timeout). Replayed or delayed data is
    not live and keeps the full ``idle_ms`` grace. All of that only
    while the router is heard from: if its reports stop (it is stalled, busy or
    dead), nothing is assumed and the watermark waits for the slowest source.
    Without a wall clock (``now=None``, as in replay) every source counts.
    """

    __slots__ = ("idle_ms", "latest", "seen_at", "backlog", "heard_at")

    def __init__(self, idle_ms: int) -> None:
        self.idle_ms = idle_ms
        self.latest: dict[str, int] = {}  # source -> largest event time seen
        self.seen_at: dict[str, float] = {}  # source -> wall-clock ms it last progressed
        self.backlog: set[str] = set()  # sources with messages not yet read, as last reported
        self.heard_at: dict[str, float] = {}  # source -> wall-clock ms of its router's last report

    def observe(self, source: str, ts: int, now: float | None) -> None:
        """A source reports its largest event time so far; -1 means it has delivered nothing yet."""
        if source not in self.latest or ts > self.latest[source]:
            self.latest[source] = ts
            if now is not None:
                self.seen_at[source] = now

    def report(self, now: float, sources: set[str], backlog: set[str]) -> None:
        """A router's word on the sources it reads: heard now, and which still have messages to read."""
        for src in sources:
            self.heard_at[src] = now
            self.seen_at.setdefault(src, now)  # e.g. restored from storage: idle only from now on
        self.backlog = (self.backlog - sources) | backlog

    def _live(self, src: str, ts: int, idle: int) -> bool:
        """Its latest event reached us within ``idle_ms`` of its own event time."""
        seen = self.seen_at.get(src)
        return seen is not None and ts >= 0 and abs(seen - ts) <= idle

    def current(self, now: float | None) -> int | None:
        """The watermark in epoch ms, or None before any event was seen."""
        if not self.latest:
            return None
        if now is None:
            return min(self.latest.values())
        idle = self.idle_ms
        active = [
            ts
            for src, ts in self.latest.items()
            if now - self.heard_at.get(src, -idle - 1.0) > idle  # its router is silent: assume nothing
            or src in self.backlog
            or (now - self.seen_at.get(src, -idle - 1.0) <= idle and not self._live(src, ts, idle))
        ]
        if active:
            return min(active)
        quiet_for = now - max(self.seen_at.values(), default=now) - idle
        return max(self.latest.values()) + max(0, int(quiet_for))
