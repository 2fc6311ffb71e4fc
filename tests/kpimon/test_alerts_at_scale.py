"""Alerts at the scale of thousands of campaigns (issue 15), replayed through the alert engine.

2,000 simulated campaigns (kpimon/history.py, segment_rows) over 7 days of hourly windows, each
on three devices, at the levels a root cause is judged at: segment, campaign, channel, device,
total. Every campaign's true CTR and conversion rate sit on their targets, so every alert
outside an injected drop is false. The rules are the 95% Wilson ones a new user writes.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from kpi_core import config
from kpi_core.plan import Plan
from kpimon import backtest as bt
from kpimon import history as hist
from kpimon.cli import cli

CAMPAIGNS, HOURS, SEED = 2000, 7 * 24, 1
WINDOW = 3_600_000


def _config(**alerting: Any) -> dict[str, Any]:
    return {
        "windows": [{"size": "1h"}],
        "breakdowns": [list(b) for b in hist.SEGMENT_BREAKDOWNS],
        "measures": {"impressions": {"event": "impression"}, "clicks": {"event": "click"}, "orders": {"event": "order"}},
        "kpis": {"ctr": {"ratio": ["clicks", "impressions"], "unit": "percent"},
                 "conversion_rate": {"ratio": ["orders", "clicks"], "unit": "percent"}},
        "targets": {"ctr": {"value": "5%", "confidence": 0.95}, "conversion_rate": {"value": "4%", "confidence": 0.95}},
        **({"alerting": alerting} if alerting else {}),
    }


def _run(args: tuple[dict[str, Any], int]) -> dict[str, Any]:
    """One backtest of the simulated week (in a worker process, so the runs share the cores)."""
    cfg, drops = args
    marks = hist.segment_drops(CAMPAIGNS, HOURS, drops, SEED) if drops else []
    labels = [bt.Label(tuple(sorted(d.group.items())), d.kpi, d.start, d.end) for d in marks] if drops else None
    outcome = bt.judge_records(Plan(config.from_dict(cfg)), hist.segment_rows(CAMPAIGNS, HOURS, SEED, marks))
    return bt.discoveries(outcome, labels, WINDOW)


@pytest.fixture(scope="module")
def runs() -> dict[str, dict[str, Any]]:
    jobs = {"fdr": (_config(), 0), "none": (_config(fdr=None), 0), "drops": (_config(), 30)}
    with ProcessPoolExecutor(len(jobs)) as pool:  # ~1.5 CPU-minutes each: on 2 cores, all at once
        results = dict(zip(jobs, pool.map(_run, jobs.values())))
    for name, r in results.items():
        print(name, r)
    return results


def test_with_no_real_change_fdr_control_keeps_alerts_to_few_windows_and_cuts_false_incidents_tenfold(runs: dict[str, dict[str, Any]]) -> None:
    fdr, none = runs["fdr"], runs["none"]
    assert fdr["windows"] == none["windows"] == HOURS
    print(f"windows with any alert: {fdr['windows_with_alert']} of {HOURS} with FDR control at q = 0.1, "
          f"{none['windows_with_alert']} without; false incidents: {fdr['false_incidents']} with, {none['false_incidents']} without")
    assert fdr["share_of_windows_with_alert"] <= 0.10
    assert fdr["false_incidents"] * 10 <= none["false_incidents"]
    assert none["share_of_windows_with_alert"] > 0.9  # the noise the control removes is real


def test_thirty_segment_drops_are_caught_within_two_windows_each_as_one_incident_on_its_segment(runs: dict[str, dict[str, Any]]) -> None:
    r = runs["drops"]
    print(f"drops detected within 2 windows: {r['detected']} of {r['labelled']}; one incident on its segment: "
          f"{r['one_incident_each']}; false incidents: {r['false_incidents']}")
    assert r["labelled"] == 30
    assert r["detected"] >= 24
    assert r["one_incident_each"] == 30


def test_the_drops_are_really_in_the_data() -> None:
    # The simulator's drop is in the numbers, and only in its segment and hours.
    (d,) = hist.segment_drops(20, 48, 1, SEED)
    rows = [r for r in hist.segment_rows(20, 48, SEED, [d]) if r["breakdown"] == "campaign,channel,device"]
    ctr = {(r["group"]["campaign"], r["group"]["device"], bt._ms(r["start"])): r["measures"]["clicks"] / r["measures"]["impressions"] for r in rows}
    inside = [v for (c, dev, t), v in ctr.items() if c == d.campaign and dev == d.device and d.start <= t < d.end]
    outside = [v for (c, dev, t), v in ctr.items() if not (c == d.campaign and dev == d.device and d.start <= t < d.end)]
    assert len(inside) == (d.end - d.start) // WINDOW
    assert sum(inside) / len(inside) == pytest.approx(0.05 * d.factor, rel=0.1)
    assert sum(outside) / len(outside) == pytest.approx(0.05, rel=0.01)


def test_kpimon_backtest_reports_the_false_discovery_figures_for_a_labelled_file(tmp_path: Path) -> None:
    history, labels, cfg = tmp_path / "history.jsonl", tmp_path / "labels.jsonl", tmp_path / "kpimon.yaml"
    result = CliRunner().invoke(cli, ["history", str(history), "--labels", str(labels), "--segments",
                                      "--campaigns", "300", "--hours", "48", "--drops", "5"])
    assert result.exit_code == 0, result.output
    cfg.write_bytes(orjson.dumps(_config()))  # JSON is YAML
    result = CliRunner().invoke(cli, ["backtest", str(history), "--config", str(cfg), "--labels", str(labels), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)["discovery"]
    # The command's figures are what the library gives for the same file, with and without control.
    plan = Plan(config.from_dict(_config()))
    marks = bt.read_labels(labels)
    assert report["with_fdr"] == bt.discoveries(bt.judge(plan, history), marks, WINDOW)
    assert report["without_fdr"] == bt.discoveries(bt.judge(bt.without_fdr(plan), history), marks, WINDOW)
    assert report["with_fdr"]["labelled"] == 5 and report["q"] == 0.1
    assert report["with_fdr"]["false_incidents"] * 10 <= report["without_fdr"]["false_incidents"]
    result = CliRunner().invoke(cli, ["backtest", str(history), "--config", str(cfg), "--labels", str(labels)])
    assert result.exit_code == 0, result.output
    assert "windows with any alert" in result.output and "without FDR control" in result.output
