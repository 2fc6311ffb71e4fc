"""The exporter: label cardinality bounded to the top campaigns, with exact sums for "other"."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kpi_core.config import from_dict
from kpi_core.plan import Plan
from kpi_core.results import Snapshot
from streams.metrics import Metrics


def _metrics(top: int) -> Metrics:
    plan = Plan(from_dict({
        "windows": [{"size": "1m"}],
        "breakdowns": [["campaign"], []],
        "measures": {"impressions": {"event": "impression"}, "clicks": {"event": "click"}},
        "kpis": {"ctr": {"ratio": ["clicks", "impressions"]}},
        "targets": {"ctr": {"value": 0.01}},
        "top_campaigns": top,
    }))
    m = Metrics(plan)
    for name, imps, clicks in [("big", 1000, 50), ("mid", 500, 10), ("small", 100, 1), ("tiny", 10, 1)]:
        snap = Snapshot("1m", 0, 60_000, ("campaign",), {"campaign": name}, "events", {"impressions": imps, "clicks": clicks}, {"ctr": clicks / imps})
        m.record_snapshot(snap, owner=0)
    return m


def _samples(m: Metrics, name: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in family.samples:
            if s.name == name:
                out[(s.labels.get("kpi") or s.labels.get("measure"), s.labels["campaign"])] = s.value
    return out


def test_only_the_top_campaigns_keep_their_own_labels() -> None:
    m = _metrics(top=2)
    assert _samples(m, "kpimon_measure_value") == {
        ("impressions", "big"): 1000, ("clicks", "big"): 50,
        ("impressions", "mid"): 500, ("clicks", "mid"): 10,
        ("impressions", "other"): 110, ("clicks", "other"): 2,  # small + tiny, summed
    }
    # "other"'s CTR comes from the sums (2 / 110), never from averaging 1% and 10%
    assert _samples(m, "kpimon_kpi_value") == {("ctr", "big"): 0.05, ("ctr", "mid"): 0.02, ("ctr", "other"): 2 / 110}
    assert set(_samples(m, "kpimon_kpi_target")) == {("ctr", "big"), ("ctr", "mid")}


def test_zero_means_unbounded() -> None:
    assert {c for _, c in _samples(_metrics(top=0), "kpimon_kpi_value")} == {"big", "mid", "small", "tiny"}


def test_forgetting_a_partition_drops_its_series() -> None:
    m = _metrics(top=0)
    m.kpis.forget(0)
    assert _samples(m, "kpimon_kpi_value") == {}


def _series(m: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(generate_latest(m.registry).decode()) for s in family.samples if s.name == name}


def test_the_watermark_and_its_holders_are_exported_and_replaced() -> None:
    m = _metrics(top=0)
    m.record_watermark(1, 1_714_564_800_000, {"orders:0", "clicks:1"})
    assert _series(m, "kpimon_watermark_seconds") == {(("partition", "1"),): 1_714_564_800.0}
    assert set(_series(m, "kpimon_watermark_held_by")) == {(("partition", "1"), ("source", "orders:0")), (("partition", "1"), ("source", "clicks:1"))}
    m.record_watermark(1, 1_714_564_860_000, {"orders:0"})  # clicks:1 moved on: its series goes
    assert _series(m, "kpimon_watermark_held_by") == {(("partition", "1"), ("source", "orders:0")): 1.0}
    m.forget_watermark(1)  # partition revoked
    assert _series(m, "kpimon_watermark_held_by") == {} and _series(m, "kpimon_watermark_seconds") == {}


def test_the_top_n_view_is_computed_when_windows_change_not_at_every_scrape(monkeypatch) -> None:
    m = _metrics(top=2)
    computed = []
    real = m.kpis._bounded
    monkeypatch.setattr(m.kpis, "_bounded", lambda: computed.append(1) or real())
    first = _samples(m, "kpimon_kpi_value")
    assert [_samples(m, "kpimon_kpi_value") for _ in range(3)] == [first] * 3
    assert len(computed) == 1  # four scrapes, one computation
    snap = Snapshot("1m", 60_000, 120_000, ("campaign",), {"campaign": "tiny"}, "events",
                    {"impressions": 5000, "clicks": 5}, {"ctr": 0.001})
    m.record_snapshot(snap, owner=0)  # tiny becomes the biggest: the view must change
    after = _samples(m, "kpimon_kpi_value")
    assert len(computed) == 2
    assert ("ctr", "tiny") in after and ("ctr", "tiny") not in first
