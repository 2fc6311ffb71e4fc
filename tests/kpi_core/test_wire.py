"""The router → stage-1 bundles: a batch too big for one Kafka message goes in several, safely."""

from __future__ import annotations

from typing import Any

from kpi_core import wire
from kpi_core.plan import Plan

from .helpers import MIN, T, make_plan


def _events(n: int, pad: int = 0) -> list[list[Any]]:
    return [["clicks:0", i, "impression", T + i, {"campaign": f"c{i % 3}", "channel": "search", "note": "x" * pad}]
            for i in range(n)]


def test_a_small_batch_is_one_bundle_with_the_new_progress() -> None:
    events = _events(10)
    [raw] = wire.encode_bundles({"clicks:0": T - 1}, {"clicks:0": T + 9}, [], events, 1.0)
    assert wire.decode_events(raw) == ({"clicks:0": T + 9}, set(), 1.0, events)


def test_a_big_batch_is_split_in_order_and_only_the_last_bundle_moves_the_watermark() -> None:
    events = _events(3000, pad=100)
    before, now = {"clicks:0": T - 1, "views:0": T - 5}, {"clicks:0": T + 2999, "views:0": T + 10}
    bundles = wire.encode_bundles(before, now, ["views:0"], events, 2.0, limit=64 * 1024)
    assert len(bundles) > 5
    assert all(len(b) <= 64 * 1024 for b in bundles)
    decoded = [wire.decode_events(b) for b in bundles]
    assert [e for _, _, _, chunk in decoded for e in chunk] == events  # nothing lost, nothing reordered
    for watermarks, backlog, sent_at, _ in decoded[:-1]:
        # Earlier bundles promise nothing new, and every source holds: no window can close
        # between them that a later bundle still adds to.
        assert watermarks == before and backlog == {"clicks:0", "views:0"} and sent_at == 2.0
    assert decoded[-1][:2] == (now, {"views:0"})


def test_split_bundles_close_windows_as_one_bundle_does() -> None:
    # The router fills a partition's bundle source by source, so a later bundle of a batch
    # holds another source's events from the same minutes. Stage 1 closing its windows after
    # every bundle (the worst case) must give the same partials as one bundle, none late.
    from kpi_core.steps import Stage1

    plan: Plan = make_plan(allowed_lateness="0s")
    clicks = [["clicks:0", i, "impression", T + i * 100, {"campaign": "a", "channel": "search"}] for i in range(1500)]
    views = [["views:0", i, "impression", T + i * 100, {"campaign": "b", "channel": "search"}] for i in range(1500)]
    progress = {"clicks:0": T + 149_900, "views:0": T + 149_900}
    sent: list[list[tuple[Any, ...]]] = []
    for limit in (wire.MAX_BUNDLE_BYTES, 32 * 1024):
        stage = Stage1(plan, 0, 1)
        bundles = wire.encode_bundles({}, progress, [], clicks + views, 0.0, limit=limit)
        partials = []
        for raw in bundles:
            stage.absorb(raw, 0.0)
            fx = stage.close(0.0, None, 0)
            assert fx.late == 0
            partials += [(p.start, p.group, tuple(p.vector)) for s in fx.sends for p in wire.decode_partials(plan, s.value)[2]]
        sent.append(sorted(partials))
    assert len(bundles) > 2
    assert sent[0] == sent[1]
    assert (T, ("a",), (600.0, 0.0, 0.0, 0.0)) in sent[0] and (T + MIN, ("b",), (600.0, 0.0, 0.0, 0.0)) in sent[0]
