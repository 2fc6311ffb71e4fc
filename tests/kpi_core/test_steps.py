"""Stage steps (kpi_core/steps.py): what they say must happen, for known input.

Two stage-1 and two stage-2 partitions, wired by hand through the effects the steps return (what
streams/runner.py sends, a list here), give the same snapshots as the one-process pipeline.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson

from kpi_core import wire
from kpi_core.pipeline import run_all
from kpi_core.routing import combine_partition, partition_of
from kpi_core.steps import LATE, PARTIALS, SNAPSHOTS, Stage1, Stage2
from tests.kpi_core.test_arrival import HOUR, MIN, T, Feed, make_plan, traffic

N = 2


def _routed(plan: Any) -> list[Any]:
    ev = Feed(plan)
    out = []
    for campaign in ("spring", "summer", "autumn"):
        out += [(s, o, t, ts, {**d, "campaign": campaign}) for s, o, t, ts, d in traffic(ev, hours=2)]
    # Offsets in arrival order, as a source partition's are.
    return [(s, i, t, ts, d) for i, (s, _, t, ts, d) in enumerate(sorted(out, key=lambda e: e[3]))]


def _bundles(plan: Any, events: list[Any], partitions: int) -> dict[int, list[bytes]]:
    """What the router would send each stage-1 partition: a bundle per 500 events, progress of every source."""
    seen: dict[str, int] = {}
    out: dict[int, list[bytes]] = defaultdict(list)
    for i in range(0, len(events), 500):
        chunk = events[i:i + 500]
        by_p: dict[int, list[Any]] = defaultdict(list)
        for e in chunk:
            seen[e[0]] = max(seen.get(e[0], 0), e[3])
            by_p[partition_of(e[4]["campaign"], partitions)].append(list(e))
        for p in range(partitions):
            out[p].append(wire.encode_events(dict(seen), [], by_p.get(p, []), None))
    return out


def test_two_by_two_partitions_through_effects_equal_the_one_process_pipeline() -> None:
    plan = make_plan()
    events = _routed(plan)
    bundles = _bundles(plan, events, N)
    # Every source far past the last window, the spend platform's too (it sent nothing).
    end = {plan.source_of(t): T + 24 * HOUR for t in ("impression", "click", "order", "spend")}
    stage1 = {p: Stage1(plan, p, N) for p in range(N)}
    stage2 = {p: Stage2(plan, p, N) for p in range(N)}
    partials: dict[int, list[bytes]] = defaultdict(list)
    for p, stage in stage1.items():
        for k, raw in enumerate(bundles[p] + [wire.encode_events(end, [], [], None)]):
            stage.absorb(raw, now=0)
            fx = stage.close(now=0, position=k + 1, at=k + 1)
            assert fx.position == k + 1 and [ns for ns, _ in fx.writes] == [""]
            sent = [s for s in fx.sends if s.topic == PARTIALS]
            # Every stage-2 partition hears each step that closed anything, with or without partials for it.
            assert [s.partition for s in sent] in ([], list(range(N)))
            for s in sent:
                partials[s.partition].append(s.value)
    got = []
    for p in sorted(stage2, reverse=True):  # partition 0, the judge, hears the others' hand-overs last
        stage = stage2[p]
        for raw in partials[p]:
            kind, body = wire.decode_stage2(plan, raw)
            if kind == "partials":
                assert all(combine_partition(plan, x.breakdown, x.group, N) == p for x in body[2])
            stage.absorb(raw)
        fx = stage.finish(position=len(partials[p]))
        # The engine's state before the judge's (partition 0 only) and the combiner's.
        assert [ns for ns, _ in fx.writes] == (["a", "j", "c"] if p == 0 else ["a", "c"])
        snaps = [orjson.loads(s.value) for s in fx.sends if s.topic == SNAPSHOTS]
        assert [s["key"] for s in snaps] == [s.key for s in fx.snapshots]
        handed = [s for s in fx.sends if s.topic == PARTIALS]
        assert handed == []  # no alert rules: nothing for the judge (tests/kpi_core/test_judge.py has them)
        partials[0] += [s.value for s in handed]
        got += snaps
    want = [s.to_json() for s in run_all(plan, events) if hasattr(s, "key")]
    assert len(want) == 3 * 2 * 2  # three campaigns, two hours, versions 1 and 2 (spend is 6 h late)
    key = lambda s: (s["key"], s["version"])  # noqa: E731
    assert sorted(got, key=key) == sorted(want, key=key)


def test_a_late_event_is_sent_to_late_events_before_the_state_that_counts_it() -> None:
    plan = make_plan()
    ev = Feed(plan)
    stage = Stage1(plan, 0, 1)
    hour = [e for e in traffic(ev, hours=1)]
    stage.absorb(wire.encode_events({e[0]: T + 3 * HOUR for e in hour}, [], [list(e) for e in hour], None), now=0)
    stage.close(now=0, position=1, at=1)
    late = ev("click", T + 5 * MIN, cost=0.5)  # its hour closed long ago
    stage.absorb(wire.encode_events({}, [], [list(late)], None), now=0)
    fx = stage.close(now=0, position=2, at=2)
    assert fx.late == 1
    assert [(s.topic, orjson.loads(s.value)) for s in fx.sends] == [
        (LATE, {"type": "click", "ts": T + 5 * MIN, "campaign": "spring", "channel": "search", "cost": 0.5,
                "source": late[0], "offset": late[1]})]
    assert stage.close(now=0, position=None, at=2).sends == []  # sent once, not again on the next step
