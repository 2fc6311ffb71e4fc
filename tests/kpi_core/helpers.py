"""Builders shared by the kpi_core tests: routed events, small configs, snapshot lookups."""

from __future__ import annotations

import itertools
from typing import Any

from kpi_core import config
from kpi_core.aggregate import Routed
from kpi_core.plan import Plan
from kpi_core.results import Snapshot

#: 2024-05-01T12:00:00Z: a historical time that is a multiple of every window size used here.
T = 1_714_564_800_000
SEC = 1_000
MIN = 60_000

#: Measures and KPIs that only need raw events (no sessions), for small configs.
EVENT_MEASURES: dict[str, Any] = {
    "impressions": {"event": "impression"},
    "clicks": {"event": "click"},
    "click_cost": {"event": "click", "sum": "cost"},
    "orders": {"event": "order"},
}
EVENT_KPIS: dict[str, Any] = {
    "ctr": {"ratio": ["clicks", "impressions"], "unit": "percent"},
    "cpc": {"ratio": ["click_cost", "clicks"], "direction": "lower", "unit": "currency"},
}


#: The first built-in configuration, kept here so exact-value tests don't move when default.yaml grows.
CLASSIC: dict[str, Any] = {
    "windows": [{"size": "1m"}],
    "allowed_lateness": "10s",
    "session_timeout": "30m",
    "breakdowns": [["campaign"], ["channel"], []],
    "measures": {
        "impressions": {"event": "impression"},
        "clicks": {"event": "click"},
        "click_cost": {"event": "click", "sum": "cost"},
        "orders": {"event": "order"},
        "sessions": {"event": "session"},
        "bounced_sessions": {"event": "session", "where": {"bounced": True}},
    },
    "kpis": {
        "ctr": {"ratio": ["clicks", "impressions"], "unit": "percent"},
        "cpc": {"ratio": ["click_cost", "clicks"], "direction": "lower", "unit": "currency"},
        "conversion_rate": {"ratio": ["orders", "clicks"], "unit": "percent"},
        "bounce_rate": {"ratio": ["bounced_sessions", "sessions"], "direction": "lower", "unit": "percent"},
    },
}


def make_plan(**overrides: Any) -> Plan:
    """A Plan from a small config: 1m tumbling windows, 10s lateness, event-only KPIs."""
    raw: dict[str, Any] = {
        "windows": [{"size": "1m"}],
        "allowed_lateness": "10s",
        "breakdowns": [["campaign"], []],
        "measures": EVENT_MEASURES,
        "kpis": EVENT_KPIS,
    }
    raw.update(overrides)
    return Plan(config.from_dict(raw))


class Events:
    """Routed events from one source, with offsets handed out in creation order."""

    def __init__(self, source: str = "p0") -> None:
        self.source = source
        self._offsets = itertools.count()

    def make(self, etype: str, ts: int, campaign: str = "spring", channel: str = "search", **fields: Any) -> Routed:
        data = {"campaign": campaign, "channel": channel, **fields}
        return (self.source, next(self._offsets), etype, ts, data)

    def impression(self, ts: int, **kw: Any) -> Routed:
        return self.make("impression", ts, **kw)

    def click(self, ts: int, cost: float = 1.0, **kw: Any) -> Routed:
        return self.make("click", ts, cost=cost, **kw)

    def order(self, ts: int, revenue: float = 10.0, new_customer: bool = True, **kw: Any) -> Routed:
        return self.make("order", ts, order_id=f"o{ts}", revenue=revenue, customer_id="cust", new_customer=new_customer, **kw)

    def pageview(self, ts: int, session_id: str, page: str = "/", **kw: Any) -> Routed:
        return self.make("pageview", ts, visitor_id=f"v-{session_id}", session_id=session_id, page=page, **kw)


def by_key(snapshots: list[Snapshot], window: str | None = None) -> dict[tuple[Any, ...], Snapshot]:
    """The last version of each snapshot (of one window size, if several) by (phase, start, dims,
    group values); fails on a duplicate."""
    names = {s.window for s in snapshots}
    assert window is not None or len(names) <= 1, f"several window sizes {names}: name one"
    out: dict[tuple[Any, ...], Snapshot] = {}
    for s in snapshots:
        if window is not None and s.window != window:
            continue
        key = (s.phase, s.start, s.dims, tuple(s.group[d] for d in s.dims))
        # A key's versions come in order (a second one once delayed sources reported): keep the last.
        assert key not in out or out[key].version < s.version, f"two snapshots for {key}"
        out[key] = s
    return out
