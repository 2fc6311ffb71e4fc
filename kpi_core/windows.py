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
    it has delivered. The watermark is the minimum over the sources still active,
    so one topic read ahead of another does not make the other's events look late.
    A source known to exist but without data yet holds the watermark back too, so
    a topic whose consumption starts a little later is not judged late.
    A source that has been silent for ``idle_ms`` of wall-clock time stops holding
    the watermark back; when every source is silent, event time is assumed to
    advance with the wall clock, so a quiet stream still closes its windows.
    Without a wall clock (``now=None``, as in replay) every source counts as active.
    """

    __slots__ = ("idle_ms", "latest", "seen_at")

    def __init__(self, idle_ms: int) -> None:
        self.idle_ms = idle_ms
        self.latest: dict[str, int] = {}  # source -> largest event time seen
        self.seen_at: dict[str, float] = {}  # source -> wall-clock ms of its last report

    def observe(self, source: str, ts: int, now: float | None) -> None:
        """A source reports its largest event time so far; -1 means it has delivered nothing yet.

        Only progress counts as activity: a source that keeps reporting the same
        time (or nothing at all) goes idle after ``idle_ms``.
        """
        if source not in self.latest or ts > self.latest[source]:
            self.latest[source] = ts
            if now is not None:
                self.seen_at[source] = now

    def current(self, now: float | None) -> int | None:
        """The watermark in epoch ms, or None before any event was seen."""
        if not self.latest:
            return None
        if now is None:
            return min(self.latest.values())
        for src in self.latest.keys() - self.seen_at.keys():
            self.seen_at[src] = now  # restored from storage: idle only from now on
        active = [ts for src, ts in self.latest.items() if now - self.seen_at.get(src, now) <= self.idle_ms]
        if active:
            return min(active)
        quiet_for = now - max(self.seen_at.values()) - self.idle_ms
        return max(self.latest.values()) + int(quiet_for)
