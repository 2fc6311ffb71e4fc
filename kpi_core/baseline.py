"""Seasonal baselines: what a KPI is expected to be in *this* window, and how unusual a value is.

A KPI of one group is modelled in log space (so a 40% daily swing is the same shape
at CPC 0.20 and at CPC 2.00) as

    log value = level + hour-of-day effect + day-of-week effect + noise,

with the hour and the day taken in the configured time zone (``alerting.timezone``),
so a marketer's 9 am stays 9 am across daylight-saving changes. It is learned, not
declared: a Holt-Winters-style error-correction update after every healthy window.
Why this and not medians over past weeks: it needs 33 numbers per (KPI, group),
not hundreds, costs O(1) per window, and learns a new campaign's cycle in days.
Robustness to the anomalies themselves comes from three rules: windows of a firing
incident are not learned; a residual is clipped at ``CLIP`` spreads before it
updates anything; and the spread itself is a mean absolute residual (a MAD-like
estimate), not a variance that one spike would blow up.

Each effect starts as a running mean of what was seen at that hour (or day) and
settles to a fixed learning rate, so the first days learn fast and later ones are
stable. Nothing is judged before ``warmup`` windows (an empty or young baseline
never alerts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from statistics import NormalDist
from zoneinfo import ZoneInfo

ALPHA = 0.01  # level: half-life of about three days of hourly windows (slower than the weekly rhythm)
GAMMA = 0.15  # hour-of-day effect, per time that hour is seen
DELTA = 0.05  # day-of-week effect, per window of that day
BETA = 0.03  # spread
CLIP = 3.0  # residuals beyond this many spreads update as if they were this far
MAD_TO_SD = math.sqrt(math.pi / 2)  # mean |x| of a normal is sd × sqrt(2/pi)
_NORMAL = NormalDist()
_SETTLED_L, _SETTLED_H, _SETTLED_D = ((2 - r) / r for r in (ALPHA, GAMMA, DELTA))


@lru_cache(maxsize=64)
def two_sided_z(confidence: float) -> float:
    """How many standard deviations out a two-sided interval at ``confidence`` ends."""
    return _NORMAL.inv_cdf(1 - (1 - confidence) / 2)


def upper_tail(z: float) -> float:
    """P(Z ≥ z) for a standard normal, accurate far out in the tail (erfc; 1 − cdf rounds it away)."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def local_hour_and_day(start_ms: int, tz: ZoneInfo) -> tuple[int, int]:
    """The hour of day (0-23) and day of week (0 = Monday) of a window's start, in ``tz``."""
    t = datetime.fromtimestamp(start_ms / 1000, tz)
    return t.hour, t.weekday()


@dataclass(slots=True)
class Expectation:
    """What the baseline expects for one window: centre and spread in log space."""

    centre: float  # expected value (not log)
    sd: float  # spread of log value, model and sampling together
    hour: int
    day: int

    @staticmethod
    def limit(confidence: float) -> float:
        """How many spreads out the two-sided prediction interval at ``confidence`` ends."""
        return two_sided_z(confidence)

    def at(self, z: float) -> float:
        """The value ``z`` spreads from the expectation (log space)."""
        return self.centre * math.exp(z * self.sd)

    def range(self, confidence: float) -> tuple[float, float]:
        """The prediction interval of the value at a two-sided ``confidence``."""
        z = self.limit(confidence)
        return self.at(-z), self.at(z)

    def z(self, value: float) -> float:
        """How many spreads the value is from the expectation, in log space (+ above)."""
        if value <= 0 or self.centre <= 0:
            return -math.inf if value < self.centre else (math.inf if value > self.centre else 0.0)
        return math.log(value / self.centre) / self.sd if self.sd > 0 else 0.0

    @staticmethod
    def p_value(z: float) -> float:
        """One-sided: the chance of a value at least this far on this side, if nothing changed."""
        return upper_tail(abs(z))


@dataclass(slots=True)
class Seasonal:
    """One (KPI, group)'s learned rhythm. Stored as a plain dict (``to_json``)."""

    n: int = 0  # windows learned
    level: float = 0.0
    hod: list[float] = field(default_factory=lambda: [0.0] * 24)
    dow: list[float] = field(default_factory=lambda: [0.0] * 7)
    seen_h: list[int] = field(default_factory=lambda: [0] * 24)
    seen_d: list[int] = field(default_factory=lambda: [0] * 7)
    spread: float = 0.0  # mean absolute residual of log value
    last: int = -(2**62)  # start of the last window learned (a window learned twice counts once)

    def expect(self, hour: int, day: int, *, sampling_var: float = 0.0, warmup: int) -> Expectation | None:
        """The expectation for a window at this local hour and day; None while warming up."""
        if self.n < warmup or self.seen_h[hour] < 2 or self.seen_d[day] == 0:
            return None  # young, or this hour (or day of the week) not yet seen enough to know its effect
        # The prediction is only as good as its parts: each effect is a mean of the windows it
        # has seen (about (2 − rate) / rate of them once the rate is fixed), so a young hour or
        # day widens the range rather than raising false alarms.
        seen = 1 / min(self.seen_h[hour], _SETTLED_H) + 1 / min(self.seen_d[day], _SETTLED_D) + 1 / min(self.n, _SETTLED_L)
        sd = math.sqrt((self.spread * MAD_TO_SD) ** 2 * (1 + seen) + sampling_var)
        return Expectation(math.exp(self.level + self.hod[hour] + self.dow[day]), sd, hour, day)

    def learn(self, start: int, hour: int, day: int, value: float) -> None:
        """Fold one healthy window's value in (values ≤ 0 have no log: skipped)."""
        if start <= self.last or value <= 0:
            return
        self.last = start
        y = math.log(value)
        if self.n == 0:
            self.level = y
        predicted = self.level + self.hod[hour] + self.dow[day]
        r = y - predicted
        if self.spread > 0:
            bound = CLIP * self.spread * MAD_TO_SD
            r = max(-bound, min(bound, r))
        # The first window at an hour (or on a day) shows its effect, not noise: not a spread sample.
        known_hour, known_day = self.seen_h[hour] > 0, self.seen_d[day] > 0
        if known_hour and known_day:
            self.spread = abs(r) if self.spread == 0 else (1 - BETA) * self.spread + BETA * abs(r)
        # Early on an effect is the running mean of its residuals; later a fixed rate.
        self.seen_h[hour] += 1
        a = max(ALPHA, 1 / (self.n + 1))
        g = max(GAMMA, 1 / self.seen_h[hour])
        self.level += a * r
        rest = r * (1 - a)
        self.hod[hour] += g * rest
        if known_hour:  # before that the residual is the hour's effect: a day would take the daily cycle for its own
            self.seen_d[day] += 1
            self.dow[day] += max(DELTA, 1 / self.seen_d[day]) * rest * (1 - g)
        # Keep the effects centred, so the level carries the overall scale.
        for effects in (self.hod, self.dow):
            m = sum(effects) / len(effects)
            if m:
                for i in range(len(effects)):
                    effects[i] -= m
                self.level += m
        self.n += 1

    def to_json(self) -> dict[str, object]:
        return {"n": self.n, "level": self.level, "hod": self.hod, "dow": self.dow, "sh": self.seen_h, "sd": self.seen_d,
                "spread": self.spread, "last": self.last}

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> Seasonal:
        return cls(int(raw["n"]), float(raw["level"]), list(raw["hod"]), list(raw["dow"]), list(raw["sh"]), list(raw["sd"]),  # type: ignore[arg-type]
                   float(raw["spread"]), int(raw["last"]))  # type: ignore[arg-type]
