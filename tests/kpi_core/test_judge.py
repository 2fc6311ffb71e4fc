"""The judge (kpi_core/judge.py): windows gathered from every stage-2 partition are weighed whole,
so the alerts of three partitions wired through their effects equal the one-process pipeline's."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson

from kpi_core import config, wire
from kpi_core.incidents import AlertEvent
from kpi_core.pipeline import run_all
from kpi_core.plan import Plan
from kpi_core.routing import combine_partition
from kpi_core.steps import ALERTS, PARTIALS, Stage1, Stage2
from tests.kpi_core.test_steps import _bundles

N = 3
T = 1_704_067_200_000
MIN = 60_000


def _plan(**alerting: Any) -> Plan:
    return Plan(config.from_dict({
        "windows": [{"size": "1m"}], "allowed_lateness": "1s",
        "breakdowns": [["campaign", "device"], ["campaign"], ["device"], []],
        "measures": {"impressions": {"event": "impression"}, "clicks": {"event": "click"}},
        "kpis": {"ctr": {"ratio": ["clicks", "impressions"], "unit": "percent"}},
        "targets": {"ctr": {"value": "4.5%", "confidence": 0.95}},
        **({"alerting": alerting} if alerting else {}),
    }))


def _events(plan: Plan) -> list[Any]:
    """6 campaigns on two devices, 1,000 impressions and 50 clicks (5%) per minute each; c3 on iOS
    drops to 15 clicks in minutes 2-3, and c0 on Android to 31 in minute 2: past the 95% Wilson
    line (p ≈ 0.017), but among the window's 21 tests no discovery (q ≈ 21 × 0.017 / 3). Judged
    within c0 and c3's stage-2 partition alone (9 tests or fewer) it would be one (q ≈ 0.05)."""
    rows = []
    for m in range(5):
        for c in range(6):
            for device in ("ios", "android"):
                clicks = 50
                if (c, device) == (3, "ios") and m in (2, 3):
                    clicks = 15
                if (c, device) == (0, "android") and m == 2:
                    clicks = 31
                base = T + m * MIN
                g = {"campaign": f"c{c}", "channel": "search", "device": device}
                rows += [("impression", base + i * 50, g) for i in range(1000)]
                rows += [("click", base + 25 + i * 1000, {**g, "cost": 0.5}) for i in range(clicks)]
    rows.sort(key=lambda r: r[1])
    return [(plan.source_of(t), i, t, ts, dict(d)) for i, (t, ts, d) in enumerate(rows)]


def _live(plan: Plan, events: list[Any], *, repeat_hand_overs: bool = False) -> list[AlertEvent]:
    """Three stage-1 and three stage-2 partitions, wired through the effects the steps return."""
    end = {plan.source_of(t): T + 60 * MIN for t in ("impression", "click")}
    bundles = _bundles(plan, events, N)
    stage1 = {p: Stage1(plan, p, N) for p in range(N)}
    stage2 = {p: Stage2(plan, p, N) for p in range(N)}
    inbox: dict[int, list[bytes]] = defaultdict(list)
    for p, stage in stage1.items():
        for k, raw in enumerate(bundles[p] + [wire.encode_events(end, [], [], None)]):
            stage.absorb(raw, now=0)
            for s in stage.close(now=0, position=k + 1, at=k + 1).sends:
                if s.topic == PARTIALS:
                    inbox[s.partition].append(s.value)
    alerts = []
    # Partition 0 last: it judges once the others have handed their windows over.
    for p in sorted(stage2, reverse=True):
        for n, raw in enumerate(inbox[p]):
            stage2[p].absorb(raw)
            fx = stage2[p].finish(position=n + 1)  # one step per message, as the worker may take them
            handed = [s.value for s in fx.sends if s.topic == PARTIALS]
            assert all(s.partition == 0 for s in fx.sends if s.topic == PARTIALS)
            inbox[0] += handed * (2 if repeat_hand_overs else 1)  # a repeat: as after a crash before the position
            alerts += [AlertEvent.from_json(orjson.loads(s.value)) for s in fx.sends if s.topic == ALERTS]
    return alerts


def _facts(alerts: list[AlertEvent]) -> list[tuple[Any, ...]]:
    return [(a.id, a.kind, a.start, [(f.kpi, f.status, f.q_value, f.explains) for f in a.findings]) for a in alerts]


def test_three_partitions_alert_exactly_as_one_process_with_fdr_and_root_causes_across_them() -> None:
    plan = _plan()
    events = _events(plan)
    # The groups of the window really are spread: c3's and the device/total groups in different partitions.
    spread = {combine_partition(plan, bi, g, N) for bi, g in [(0, ("c3", "ios")), (2, ("ios",)), (3, ())]}
    assert len(spread) > 1 and combine_partition(plan, 1, ("c0",), N) == combine_partition(plan, 1, ("c3",), N) == 0
    want = [x for x in run_all(plan, events) if isinstance(x, AlertEvent)]
    got = _live(plan, events)
    assert _facts(got) == _facts(want)
    # One incident, on the segment, with c3's breach in its message; c0's weak dip is not a discovery.
    assert [(a.kind, a.group, (a.start - T) // MIN) for a in want] == [
        ("opened", {"campaign": "c3", "device": "ios"}, 2), ("resolved", {"campaign": "c3", "device": "ios"}, 4)]
    (f,) = want[0].findings
    assert [e["group"] for e in f.explains] == [{"campaign": "c3"}]


def test_a_hand_over_delivered_twice_is_judged_once() -> None:
    plan = _plan()
    events = _events(plan)
    assert _facts(_live(plan, events, repeat_hand_overs=True)) == _facts(_live(plan, events))
