"""Realistic marketing traffic for demos and load tests, with injectable anomalies.

The model follows the buyer's journey: campaigns show ads (impressions), some
impressions are clicked, every click opens a website session (page views), and
some sessions convert into leads (later qualified as MQL and SQL) or orders, a
few of which answer a survey. Spend arrives per campaign at a fixed interval.

``generate`` is pure and deterministic given the seed (and ``start_ms``), so tests
can assert on exact counts; ``run`` sends its output to Kafka.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import time
from bisect import bisect
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import orjson

from kpi_core.errors import KpimonError
from kpimon.producer import DeliveryTracker, connect, message_key
from kpimon.trackers import CARRIED, WRITERS

log = logging.getLogger("kpimon.simulator")

#: KPIs an anomaly can distort.
ANOMALY_KPIS = ("ctr",)

#: Pages a campaign can land on, and the pages visitors browse afterwards.
LANDING_PAGES = ("/", "/offers/spring-sale", "/pricing", "/products/starter-kit", "/webinar", "/blog/kpi-guide")
SITE_PAGES = ("/products", "/products/pro", "/pricing", "/features", "/about", "/blog", "/faq", "/cart")
SIGNUP_PAGE = "/signup"
CHECKOUT_PAGE = "/checkout"

#: Survey answers lean positive, as real NPS answers do; index = score 0..10.
SURVEY_WEIGHTS = (2, 1, 1, 2, 2, 4, 6, 12, 20, 25, 25)

TICK_MS = 1000  # events are generated, ordered and emitted one second of event time at a time


class SimulatorError(KpimonError):
    """The simulation settings make no sense; fix the named setting."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How much traffic to simulate and what it looks like."""

    campaigns: int = 20
    channels: tuple[str, ...] = ("paid_search", "social", "email", "organic", "referral", "direct")
    cpc_channels: tuple[str, ...] = ("paid_search", "social")  # clicks cost money only here
    spend_channels: tuple[str, ...] = ("paid_search", "social", "email")  # budgets are spent only here
    rate: float = 20.0  # mean impressions per second per campaign
    rate_spread: tuple[float, float] = (0.5, 1.5)  # each campaign's volume is rate times a draw from this
    ctr_range: tuple[float, float] = (0.02, 0.06)  # each campaign's base click-through rate
    cpc_range: tuple[float, float] = (0.30, 2.50)  # cost per click
    bounce_prob: float = 0.45  # sessions that leave after the landing page
    pages_range: tuple[int, int] = (2, 6)  # browsing page views in a session that does not bounce
    page_gap_s: tuple[float, float] = (2.0, 20.0)  # time between page views
    lead_prob: float = 0.10  # of sessions that do not bounce
    mql_prob: float = 0.40  # of leads
    sql_prob: float = 0.50  # of MQLs
    order_prob: float = 0.06  # of sessions that do not bounce
    revenue_range: tuple[float, float] = (15.0, 400.0)
    new_customer_prob: float = 0.6
    returning_customers: int = 5_000  # the pool returning customers are drawn from
    visitors: int = 200_000  # the pool visitor ids are drawn from, so some visitors return
    spend_interval_s: float = 10.0  # one spend event per spending campaign per interval
    spend_range: tuple[float, float] = (5.0, 40.0)
    survey_prob: float = 0.3  # of orders
    devices: tuple[tuple[str, float], ...] = (("desktop", 0.55), ("mobile", 0.38), ("tablet", 0.07))
    countries: tuple[tuple[str, float], ...] = (
        ("US", 0.40), ("GB", 0.15), ("DE", 0.12), ("FR", 0.08), ("IN", 0.15), ("BR", 0.10),
    )
    seed: int = 7

    def __post_init__(self) -> None:
        if self.campaigns < 1:
            raise SimulatorError("campaigns must be at least 1")
        if not self.channels:
            raise SimulatorError("channels must not be empty")
        if self.rate < 0 or self.spend_interval_s <= 0 or self.visitors < 1 or self.returning_customers < 1:
            raise SimulatorError("rate must be >= 0; spend_interval_s, visitors and returning_customers > 0")
        for name in ("bounce_prob", "lead_prob", "mql_prob", "sql_prob", "order_prob", "new_customer_prob", "survey_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SimulatorError(f"{name} must be a probability from 0 to 1")
        for name in ("rate_spread", "ctr_range", "cpc_range", "pages_range", "page_gap_s", "revenue_range", "spend_range"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise SimulatorError(f"{name} must be (low, high) with 0 <= low <= high")
        if self.ctr_range[1] > 1.0:
            raise SimulatorError("ctr_range must stay within 0..1")
        for name in ("devices", "countries"):
            if not getattr(self, name) or any(w < 0 for _, w in getattr(self, name)):
                raise SimulatorError(f"{name} must be non-empty (value, weight) pairs with weights >= 0")


@dataclass(frozen=True, slots=True)
class Anomaly:
    """From ``start_s`` seconds of event time after the start, ``campaign``'s ``kpi`` is multiplied by ``factor``."""

    campaign: str
    kpi: str = "ctr"
    factor: float = 0.3  # 0.3 is a 70% drop
    start_s: float = 30.0

    def __post_init__(self) -> None:
        if self.kpi not in ANOMALY_KPIS:
            raise SimulatorError(f"anomaly kpi must be one of {', '.join(ANOMALY_KPIS)}, got {self.kpi!r}")
        if self.factor < 0 or self.start_s < 0:
            raise SimulatorError("anomaly factor and start_s must be >= 0")


@dataclass(frozen=True, slots=True)
class _Campaign:
    name: str
    channel: str
    rate: float  # impressions per millisecond
    ctr: float
    cpc: tuple[float, float]
    spend: bool
    landing_page: str


def campaign_name(index: int) -> str:
    """The simulator's name for campaign number ``index``: ``camp-000``, ``camp-001``, ..."""
    return f"camp-{index:03d}"


def _campaigns(cfg: SimConfig, rng: random.Random) -> list[_Campaign]:
    out = []
    for i in range(cfg.campaigns):
        channel = cfg.channels[i % len(cfg.channels)]  # fixed and evenly spread
        out.append(
            _Campaign(
                name=campaign_name(i),
                channel=channel,
                rate=cfg.rate * rng.uniform(*cfg.rate_spread) / 1000,
                ctr=rng.uniform(*cfg.ctr_range),
                cpc=cfg.cpc_range if channel in cfg.cpc_channels else (0.0, 0.0),
                spend=channel in cfg.spend_channels,
                landing_page=rng.choice(LANDING_PAGES),
            )
        )
    return out


class _Weighted:
    """Draws a value by weight with one uniform number (bisect over cumulative weights)."""

    def __init__(self, pairs: Sequence[tuple[str, float]]) -> None:
        self.values = [v for v, _ in pairs]
        self.cum = list(itertools.accumulate(w for _, w in pairs))
        self.total = self.cum[-1]

    def draw(self, u: float) -> str:
        return self.values[min(bisect(self.cum, u * self.total), len(self.values) - 1)]


def generate(
    cfg: SimConfig,
    *,
    start_ms: int,
    duration_s: float | None,
    anomalies: Sequence[Anomaly] = (),
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(event_type, event)`` in event-time order over ``[start_ms, start_ms + duration)``; None runs forever."""
    rng = random.Random(cfg.seed)
    campaigns = _campaigns(cfg, rng)
    drops = _drops(anomalies, campaigns, start_ms)
    end_ms = None if duration_s is None else start_ms + int(duration_s * 1000)
    devices, countries = _Weighted(cfg.devices), _Weighted(cfg.countries)
    journeys = _Journeys(cfg, rng, tag=f"{start_ms:x}{cfg.seed & 0xFFFF:04x}")
    # Impressions are a Poisson process per campaign: each one's time is the last plus an exponential gap.
    next_impression = [start_ms + rng.expovariate(c.rate) if c.rate else float("inf") for c in campaigns]
    spend_every = cfg.spend_interval_s * 1000
    next_spend = [start_ms + rng.uniform(0, spend_every) for _ in campaigns]  # campaigns report out of step
    seq = journeys.seq
    random_ = rng.random
    expovariate = rng.expovariate
    tick = start_ms
    while end_ms is None or tick < end_ms:
        tick_end = tick + TICK_MS if end_ms is None else min(tick + TICK_MS, end_ms)
        batch: list[tuple[int, int, str, dict[str, Any]]] = []
        for i, c in enumerate(campaigns):
            name, channel, base_ctr = c.name, c.channel, c.ctr
            drop_at, factor = drops.get(name, (None, 1.0))
            t = next_impression[i]
            while t < tick_end:
                ts = int(t)
                imp = {
                    "type": "impression", "ts": ts, "campaign": name, "channel": channel,
                    "device": devices.draw(random_()), "country": countries.draw(random_()),
                }
                batch.append((ts, next(seq), "impression", imp))
                ctr = base_ctr * factor if drop_at is not None and ts >= drop_at else base_ctr
                if random_() < ctr:
                    journeys.click(c, imp)
                t += expovariate(c.rate)
            next_impression[i] = t
            while c.spend and next_spend[i] < tick_end:
                ts = int(next_spend[i])
                amount = round(rng.uniform(*cfg.spend_range), 2)
                batch.append((ts, next(seq), "spend", {"type": "spend", "ts": ts, "campaign": name, "channel": channel, "amount": amount}))
                next_spend[i] += spend_every
        # Journeys are scheduled whole at click time and always lie later than their impression,
        # so everything due before tick_end is known by now.
        pending = journeys.pending
        while pending and pending[0][0] < tick_end:
            batch.append(heapq.heappop(pending))
        batch.sort()  # seq is unique, so tuples never compare their dicts
        for _, _, etype, obj in batch:
            yield etype, obj
        tick = tick_end


def _drops(anomalies: Sequence[Anomaly], campaigns: list[_Campaign], start_ms: int) -> dict[str, tuple[int, float]]:
    names = {c.name for c in campaigns}
    drops: dict[str, tuple[int, float]] = {}
    for a in anomalies:
        if a.campaign not in names:
            raise SimulatorError(f"anomaly campaign {a.campaign!r} is not simulated; expected camp-000..{campaigns[-1].name}")
        drops[a.campaign] = (start_ms + int(a.start_s * 1000), a.factor)
    return drops


class _Journeys:
    """What follows a click: a session of page views, and perhaps a lead or an order."""

    def __init__(self, cfg: SimConfig, rng: random.Random, tag: str) -> None:
        self.cfg = cfg
        self.rng = rng
        self.tag = tag  # makes ids unique across runs that start at different times
        self.seq = itertools.count()
        self.ids = itertools.count()
        self.pending: list[tuple[int, int, str, dict[str, Any]]] = []  # a heap by (ts, seq)

    def _emit(self, etype: str, ts: int, fields: dict[str, Any]) -> None:
        heapq.heappush(self.pending, (ts, next(self.seq), etype, {"type": etype, "ts": ts, **fields}))

    def click(self, c: _Campaign, imp: dict[str, Any]) -> None:
        """Schedule a click on ``imp`` and everything the click leads to."""
        cfg, rng = self.cfg, self.rng
        n = next(self.ids)
        base = {"campaign": c.name, "channel": c.channel, "device": imp["device"], "country": imp["country"]}
        ts = imp["ts"] + rng.randint(200, 3000)
        self._emit("click", ts, {**base, "cost": round(rng.uniform(*c.cpc), 2), "landing_page": c.landing_page})
        visit = {**base, "visitor_id": f"v-{rng.randrange(cfg.visitors)}", "session_id": f"s-{self.tag}-{n}"}
        ts += rng.randint(300, 2500)
        self._emit("pageview", ts, {**visit, "page": c.landing_page})
        if rng.random() < cfg.bounce_prob:
            return
        for _ in range(rng.randint(*cfg.pages_range)):
            ts += self._gap()
            self._emit("pageview", ts, {**visit, "page": rng.choice(SITE_PAGES)})
        origin = {**base, "landing_page": c.landing_page}
        if rng.random() < cfg.lead_prob:
            ts += self._gap()
            self._emit("pageview", ts, {**visit, "page": SIGNUP_PAGE})
            self._lead(origin, ts + rng.randint(1000, 5000), f"l-{self.tag}-{n}")
        if rng.random() < cfg.order_prob:
            ts += self._gap()
            self._emit("pageview", ts, {**visit, "page": CHECKOUT_PAGE})
            self._order(origin, ts + rng.randint(5000, 30_000), n)

    def _gap(self) -> int:
        return int(self.rng.uniform(*self.cfg.page_gap_s) * 1000)

    def _lead(self, origin: dict[str, Any], ts: int, lead_id: str) -> None:
        cfg, rng = self.cfg, self.rng
        self._emit("lead", ts, {**origin, "lead_id": lead_id, "stage": "lead"})
        # Qualification takes days in real life; seconds here, so a short demo shows MQLs and SQLs.
        if rng.random() < cfg.mql_prob:
            ts += rng.randint(20_000, 90_000)
            self._emit("lead", ts, {**origin, "lead_id": lead_id, "stage": "mql"})
            if rng.random() < cfg.sql_prob:
                ts += rng.randint(20_000, 90_000)
                self._emit("lead", ts, {**origin, "lead_id": lead_id, "stage": "sql"})

    def _order(self, origin: dict[str, Any], ts: int, n: int) -> None:
        cfg, rng = self.cfg, self.rng
        new = rng.random() < cfg.new_customer_prob
        customer = f"c-{self.tag}-{n}" if new else f"c-{rng.randrange(cfg.returning_customers)}"
        revenue = round(rng.uniform(*cfg.revenue_range), 2)
        self._emit("order", ts, {**origin, "order_id": f"o-{self.tag}-{n}", "revenue": revenue, "customer_id": customer, "new_customer": new})
        if rng.random() < cfg.survey_prob:
            score = rng.choices(range(11), weights=SURVEY_WEIGHTS)[0]
            self._emit("survey", ts + rng.randint(10_000, 60_000), {**origin, "score": score, "customer_id": customer})


@dataclass(frozen=True, slots=True)
class Delivery:
    """How the simulated platforms deliver their data (README, "Late and restated data").

    Spend becomes a report per campaign and period (``ts`` the period's start), sent
    ``spend_delay_s`` after the period ends and restated once ``restate_after_s`` later
    with invalid-click credits taken off (``report_version`` 2). Leads arrive in CRM
    syncs every ``lead_sync_s``; orders ``order_lag_s`` after they happened.
    """

    spend_period_s: float = 3600.0
    spend_delay_s: float = 7200.0
    restate_after_s: float = 1800.0
    restate_credit: float = 0.03  # share of a report taken back by its restatement
    lead_sync_s: float = 900.0
    order_lag_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.spend_period_s <= 0 or min(self.spend_delay_s, self.restate_after_s, self.lead_sync_s, self.order_lag_s) < 0:
            raise SimulatorError("delivery: spend_period_s must be > 0, the delays >= 0")
        if not 0 <= self.restate_credit < 1:
            raise SimulatorError("delivery: restate_credit must be in [0, 1)")


#: Compressed for a live demo (30 s windows): 30-second reports a minute late, restated 10 s later.
DEMO_DELIVERY = Delivery(spend_period_s=30, spend_delay_s=60, restate_after_s=10, lead_sync_s=30, order_lag_s=20)


def deliver(events: Iterator[tuple[str, dict[str, Any]]], d: Delivery) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """``(arrival ms, type, event)`` in arrival order: the generated stream as the platforms deliver it.

    Arrival is never before event time, so once the stream has reached a time, whatever
    is due by then is known and goes out.
    """
    due: list[tuple[int, int, str, dict[str, Any]]] = []
    seq = itertools.count()
    period = int(d.spend_period_s * 1000)
    reports: dict[tuple[int, str, str], float] = {}  # (period start, campaign, channel) -> spend so far
    open_period: int | None = None

    def close_reports(before: int) -> None:
        for key in sorted(k for k in reports if k[0] + period <= before):
            start, campaign, channel = key
            amount = round(reports.pop(key), 2)
            first = start + period + int(d.spend_delay_s * 1000)
            report = {"type": "spend", "ts": start, "campaign": campaign, "channel": channel, "amount": amount, "report_version": 1}
            heapq.heappush(due, (first, next(seq), "spend", report))
            restated = {**report, "amount": round(amount * (1 - d.restate_credit), 2), "report_version": 2}
            heapq.heappush(due, (first + int(d.restate_after_s * 1000), next(seq), "spend", restated))

    now = 0
    for etype, obj in events:
        ts = obj["ts"]
        now = max(now, ts)
        if etype == "spend":
            key = (ts - ts % period, obj["campaign"], obj["channel"])
            reports[key] = reports.get(key, 0.0) + obj["amount"]
        elif etype == "lead":
            sync = int(d.lead_sync_s * 1000)
            heapq.heappush(due, (ts - ts % sync + sync if sync else ts, next(seq), etype, obj))
        elif etype == "order":
            heapq.heappush(due, (ts + int(d.order_lag_s * 1000), next(seq), etype, obj))
        else:
            heapq.heappush(due, (ts, next(seq), etype, obj))
        if open_period != now - now % period:
            open_period = now - now % period
            close_reports(now)
        while due and due[0][0] <= now:
            at, _, t, o = heapq.heappop(due)
            yield at, t, o
    close_reports(2**62)
    while due:
        at, _, t, o = heapq.heappop(due)
        yield at, t, o


def run(
    cfg: SimConfig,
    *,
    bootstrap: str,
    topics: Mapping[str, str],
    duration_s: float | None,
    realtime: bool = True,
    anomalies: Sequence[Anomaly] = (),
    start_ms: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    delivery: Delivery | None = None,
    formats: Mapping[str, str] | None = None,
) -> int:
    """Produce simulated events to Kafka (``topics``: event type -> topic); return how many were delivered.

    Event types missing from ``topics`` are not produced. In realtime mode events are
    sent when the wall clock reaches their event time; otherwise as fast as possible.
    ``on_progress(sent, event_ts_ms)`` is called about once a second. With ``delivery``,
    events go out when they would arrive from real platforms (late spend reports,
    restatements, lead syncs, order imports), not at their event time. ``formats``
    (topic -> tracker format) writes a topic's events as that tracker would (kpimon/trackers.py).
    """
    start = int(time.time() * 1000) if start_ms is None else start_ms
    writers = {t: WRITERS[f] for t, f in (formats or {}).items()}
    producer = connect(bootstrap, acks=1)
    tracker = DeliveryTracker()
    sent = 0
    last_report = time.monotonic()
    try:
        stream = generate(cfg, start_ms=start, duration_s=duration_s, anomalies=anomalies)
        arrivals = deliver(stream, delivery) if delivery else ((obj["ts"], etype, obj) for etype, obj in stream)
        for at, etype, obj in arrivals:
            topic = topics.get(etype)
            if topic is None:
                continue
            ts = obj["ts"]
            if realtime:
                wait_ms = at - time.time() * 1000
                if wait_ms > 5:  # sleeping for less is not worth a system call per event
                    time.sleep(wait_ms / 1000)
            writer = writers.get(topic)
            value = orjson.dumps(writer(etype, obj) if writer else obj)
            future = producer.send(topic, value=value, key=message_key(obj), timestamp_ms=ts)
            tracker.watch(future)
            sent += 1
            if on_progress is not None and time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                on_progress(sent, ts)
    except KeyboardInterrupt:
        pass  # stop cleanly: what was sent so far is still flushed below
    finally:
        producer.flush()
        producer.close()
    if tracker.failed:
        # e.g. brokers reject timestamps too far ahead (log.message.timestamp.after.max.ms)
        log.warning("%d of %d simulated events were not delivered; the first error: %s", tracker.failed, sent, tracker.first_error)
    return sent - tracker.failed


def source_topics(sources: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Where the simulator sends each event type, and in which tracker format, for a config's
    ``topics.sources``: (event type -> topic, topic -> format).

    A kpimon topic of the type wins; a type without one goes to a tracker topic that carries
    it (the first declared). A declared ``mapping`` is a format the simulator cannot write.
    """
    topics = {s.type: t for t, s in sources.items() if s.type is not None}
    formats: dict[str, str] = {}
    for topic, s in sources.items():
        for etype in CARRIED.get(s.format, ()):
            if etype not in topics:
                topics[etype] = topic
                formats[topic] = s.format
    return topics, formats
