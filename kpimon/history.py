"""Simulated KPI history: hourly measures per campaign with a daily and weekly rhythm, noise
per campaign, and labelled anomalies of chosen shapes, for testing and backtesting drift rules.

The output is what kpimon itself publishes and what a warehouse keeps: one hourly
``kpi-snapshots`` record per campaign (``measures`` only; ``kpimon backtest`` computes
the KPIs from them with its config), plus a labels file of the injected anomalies
(``{"campaign", "kpi", "shape", "start", "end"}``, epoch ms, ``end`` exclusive).

Per campaign and hour: impressions follow the traffic cycle; CTR, CPC and conversion each
swing ``amplitude`` (±40%) over the day with their own phase, move ``weekly`` on weekends,
and carry lognormal noise of the campaign's level (3-10% by default); clicks and orders are drawn
from those rates (normal approximation of the binomial), so low volume is noisy too.
Shapes: ``spike`` (one hour × factor), ``step`` (24 hours × factor), ``drop`` (12 hours ×
factor), ``ramp`` (a slow drift to × factor over 24 hours).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from kpi_core.errors import KpimonError
from kpi_core.results import iso

HOUR = 3_600_000
START = 1_704_067_200_000  # 2024-01-01T00:00:00Z, a Monday
SHAPES = {"spike": 1, "step": 24, "drop": 12, "ramp": 24}  # hours each lasts


@dataclass(frozen=True, slots=True)
class Anomaly:
    campaign: str
    kpi: str
    shape: str
    start: int  # epoch ms, the first hour it affects
    end: int  # exclusive
    factor: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Plan:
    """What to inject: (shape, KPI, factor, how many)."""

    anomalies: tuple[tuple[str, str, float, int], ...] = (
        ("spike", "cpc", 3.0, 30),
        ("step", "cpc", 1.5, 30),
        ("drop", "conversion_rate", 0.6, 20),
    )


def _campaign(i: int) -> str:
    return f"camp-{i:04d}"


def anomalies(campaigns: int, weeks: int, seed: int, plan: Plan = Plan(), *, warmup_hours: int = 168) -> list[Anomaly]:
    """Where the anomalies go: random campaigns and hours after the first week, never two of
    the same KPI and campaign within a day of each other."""
    rng = random.Random(seed * 7919 + 1)
    hours = weeks * 168
    taken: dict[tuple[str, str], list[tuple[int, int]]] = {}
    out = []
    for shape, kpi, factor, count in plan.anomalies:
        length = SHAPES[shape]
        placed = 0
        while placed < count:
            c = _campaign(rng.randrange(campaigns))
            h = rng.randrange(warmup_hours, hours - length)
            spans = taken.setdefault((c, kpi), [])
            if any(h < e + 24 and s < h + length + 24 for s, e in spans):
                continue
            spans.append((h, h + length))
            out.append(Anomaly(c, kpi, shape, START + h * HOUR, START + (h + length) * HOUR, factor))
            placed += 1
    return sorted(out, key=lambda a: (a.start, a.campaign, a.kpi))


def rows(campaigns: int, weeks: int, seed: int, labels: list[Anomaly], *, amplitude: float = 0.4,
         weekly: float = 0.15, noise: tuple[float, float] = (0.03, 0.10)) -> Iterator[dict[str, Any]]:
    """The hourly snapshot records, in time order (each hour: every campaign)."""
    rng = random.Random(seed)
    profile = []
    for i in range(campaigns):
        profile.append({
            "impressions": rng.uniform(20_000, 80_000), "ctr": rng.uniform(0.02, 0.05), "cpc": rng.uniform(0.2, 2.0),
            "cvr": rng.uniform(0.04, 0.08), "noise": rng.uniform(noise[0], noise[1]),
            "phase": {k: rng.uniform(0, 24) for k in ("traffic", "ctr", "cpc", "cvr")},
            "weekly": {k: rng.uniform(-weekly, weekly) for k in ("traffic", "ctr", "cpc", "cvr")},
        })
    by_campaign: dict[str, list[Anomaly]] = {}
    for a in labels:
        by_campaign.setdefault(a.campaign, []).append(a)
    kpi_of = {"ctr": "ctr", "cpc": "cpc", "cvr": "conversion_rate"}
    for h in range(weeks * 168):
        start = START + h * HOUR
        hour, weekend = h % 24, (h // 24) % 7 >= 5
        for i, p in enumerate(profile):
            name = _campaign(i)

            def rate(k: str) -> float:
                cycle = math.exp(math.log(1 + amplitude) * math.sin(2 * math.pi * (hour - p["phase"][k]) / 24))
                return cycle * (1 + p["weekly"][k] if weekend else 1.0)

            effect = {"ctr": 1.0, "cpc": 1.0, "cvr": 1.0}
            for a in by_campaign.get(name, ()):
                if a.start <= start < a.end:
                    k = next(k for k, v in kpi_of.items() if v == a.kpi)
                    done = (start - a.start) / (a.end - a.start)
                    effect[k] *= 1 + (a.factor - 1) * (done if a.shape == "ramp" else 1.0)
            sigma = p["noise"]
            imps = max(1, round(p["impressions"] * rate("traffic") * math.exp(rng.gauss(0, 0.05))))
            ctr = min(0.5, p["ctr"] * rate("ctr") * math.exp(rng.gauss(0, sigma)) * effect["ctr"])
            clicks = _draw(rng, imps, ctr)
            cpc = p["cpc"] * rate("cpc") * math.exp(rng.gauss(0, sigma)) * effect["cpc"]
            cvr = min(0.9, p["cvr"] * rate("cvr") * math.exp(rng.gauss(0, sigma)) * effect["cvr"])
            orders = _draw(rng, clicks, cvr)
            yield {
                "key": f"1h|{start}|events|campaign|{name}", "version": 1, "window": "1h", "start": iso(start),
                "end": iso(start + HOUR), "breakdown": "campaign", "group": {"campaign": name}, "phase": "events",
                "measures": {"impressions": float(imps), "clicks": float(clicks), "click_cost": round(clicks * cpc, 4),
                             "orders": float(orders)},
                "kpis": {},
            }


def _draw(rng: random.Random, n: int, p: float) -> int:
    """Successes of n trials at rate p: the binomial by its normal approximation (n is large here)."""
    mean = n * p
    return max(0, min(n, round(rng.gauss(mean, math.sqrt(max(mean * (1 - p), 1e-9))))))


# -- many campaigns, no rhythm, drops in chosen segments -------------------------------------
#
# For false-discovery control and root causes (README, "Alerts at scale"): every campaign's true
# CTR and conversion rate sit exactly on one target for the whole history, so any alert outside
# an injected drop is false. Each campaign runs in one channel and splits its traffic over
# devices; a drop lowers one rate in one (campaign, device) segment. Records cover every level a
# root cause is judged at: the segment, campaign, channel, device and the total. The segment's
# breakdown names the campaign's channel too ([campaign, channel, device]): the alert engine knows
# a group lies within another by its dimensions, so that is what lets a channel's breach fold into
# the segment that explains it.

DEVICES = ("ios", "android", "desktop")
CHANNELS = ("paid_search", "paid_social", "display", "email")
SEGMENT_BREAKDOWNS = (("campaign", "channel", "device"), ("campaign",), ("channel",), ("device",), ())


@dataclass(frozen=True, slots=True)
class Drop:
    """One injected drop: ``kpi`` (ctr or conversion_rate) × ``factor`` in one segment, [start, end)."""

    campaign: str
    channel: str
    device: str
    kpi: str
    start: int
    end: int
    factor: float

    @property
    def group(self) -> dict[str, str]:
        return {"campaign": self.campaign, "channel": self.channel, "device": self.device}

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "kpi": self.kpi, "shape": "drop",
                "start": self.start, "end": self.end, "factor": self.factor}


def segment_drops(campaigns: int, hours: int, count: int, seed: int, *, kpi: str = "ctr", factor: tuple[float, float] = (0.5, 0.7),
                  length: int = 6, warmup: int = 24) -> list[Drop]:
    """``count`` drops of ``length`` hours in distinct campaigns, each to ``factor`` (a 30-50% drop by
    default), starting after ``warmup`` hours (fewer in a short history)."""
    if count > campaigns:
        raise KpimonError(f"{count} drops need as many campaigns; there are {campaigns}")
    if count and hours <= length:
        raise KpimonError(f"a drop lasts {length} hours: the history needs more than that ({hours} hours)")
    warmup = min(warmup, (hours - length) // 2)
    rng = random.Random(seed * 104_729 + 7)
    chosen = rng.sample(range(campaigns), count)
    out = []
    for c in chosen:
        h = rng.randrange(warmup, hours - length)
        out.append(Drop(_campaign(c), CHANNELS[c % len(CHANNELS)], rng.choice(DEVICES), kpi, START + h * HOUR, START + (h + length) * HOUR,
                        round(rng.uniform(*factor), 3)))
    return sorted(out, key=lambda d: (d.start, d.campaign))


def segment_rows(campaigns: int, hours: int, seed: int, drops: list[Drop] = (), *,  # type: ignore[assignment]
                 ctr: float = 0.05, cvr: float = 0.04, volume: tuple[float, float] = (20_000, 60_000)) -> Iterator[dict[str, Any]]:
    """Hourly ``kpi-snapshots`` records (impressions, clicks, orders) at every level of SEGMENT_BREAKDOWNS, in time order."""
    import numpy as np

    rng = np.random.default_rng(seed)
    names = [_campaign(i) for i in range(campaigns)]
    channel = np.array([i % len(CHANNELS) for i in range(campaigns)])
    size = rng.uniform(*volume, size=campaigns)
    mix = rng.dirichlet([6.0] * len(DEVICES), size=campaigns)  # each campaign's device split
    where = {(d.campaign, d.device): d for d in drops}
    index = {n: i for i, n in enumerate(names)}
    for h in range(hours):
        start = START + h * HOUR
        impressions = rng.poisson(size[:, None] * mix)
        rate = {"ctr": np.full(impressions.shape, ctr), "conversion_rate": np.full(impressions.shape, cvr)}
        for (c, dev), d in where.items():
            if d.start <= start < d.end:
                rate[d.kpi][index[c], DEVICES.index(dev)] *= d.factor
        clicks = rng.binomial(impressions, rate["ctr"])
        orders = rng.binomial(clicks, rate["conversion_rate"])
        cells = {"impressions": impressions, "clicks": clicks, "orders": orders}

        def record(dims: tuple[str, ...], values: tuple[str, ...], m: dict[str, Any]) -> dict[str, Any]:
            return {"key": "|".join(["1h", str(start), "events", ",".join(dims) or "total", *values]), "version": 1,
                    "window": "1h", "start": iso(start), "end": iso(start + HOUR), "breakdown": ",".join(dims) or "total",
                    "group": dict(zip(dims, values)), "phase": "events", "measures": {k: float(v) for k, v in m.items()}, "kpis": {}}

        for i, name in enumerate(names):
            for j, dev in enumerate(DEVICES):
                yield record(SEGMENT_BREAKDOWNS[0], (name, CHANNELS[channel[i]], dev), {k: v[i, j] for k, v in cells.items()})
        per_campaign = {k: v.sum(axis=1) for k, v in cells.items()}
        for i, name in enumerate(names):
            yield record(("campaign",), (name,), {k: v[i] for k, v in per_campaign.items()})
        for ci, ch in enumerate(CHANNELS):
            yield record(("channel",), (ch,), {k: v[channel == ci].sum() for k, v in per_campaign.items()})
        for j, dev in enumerate(DEVICES):
            yield record(("device",), (dev,), {k: v[:, j].sum() for k, v in cells.items()})
        yield record((), (), {k: v.sum() for k, v in cells.items()})
