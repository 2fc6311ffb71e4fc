"""``kpimon history`` and ``kpimon backtest``: the default seasonal drift rule on 200 simulated
campaigns × 8 weeks of hourly CPC, CTR and conversion (±40% daily cycle, a weekly cycle, noise per
campaign) with 30 single-hour CPC spikes ×3, 30 day-long CPC steps of +50% and 20 conversion drops of
−40%; the same rule with the trailing-mean baseline measured alongside."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from kpi_core import config
from kpi_core.plan import Plan
from kpimon import backtest, history
from tests.support.worker import ROOT

HOUR = 3_600_000
MEASURES = {"impressions": {"event": "impression"}, "clicks": {"event": "click"},
            "click_cost": {"event": "click", "sum": "cost"}, "orders": {"event": "order"}}
KPIS = {"ctr": {"ratio": ["clicks", "impressions"], "direction": "higher", "unit": "percent"},
        "cpc": {"ratio": ["click_cost", "clicks"], "direction": "lower", "unit": "currency"},
        "conversion_rate": {"ratio": ["orders", "clicks"], "direction": "higher", "unit": "percent"}}


def _config(drift: dict[str, Any]) -> dict[str, Any]:
    return {"windows": [{"size": "1h"}], "breakdowns": [["campaign"]], "measures": MEASURES, "kpis": KPIS,
            "targets": {k: {"drift": drift} for k in KPIS}}


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "kpimon.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("history")
    cfg = d / "kpimon.yaml"
    cfg.write_bytes(orjson.dumps(_config({})))  # JSON is YAML: the default drift rule, nothing tuned
    _cli("history", str(d / "history.jsonl"), "--labels", str(d / "labels.jsonl"), "--campaigns", "200", "--weeks", "8", "--seed", "1")
    return d / "history.jsonl", d / "labels.jsonl", cfg


@pytest.mark.timeout(900)
def test_the_default_seasonal_rule_catches_spikes_and_steps_with_few_false_incidents(simulated: tuple[Path, Path, Path], tmp_path: Path) -> None:
    path, labels, cfg = simulated
    report = orjson.loads(_cli("backtest", str(path), "--config", str(cfg), "--labels", str(labels), "--format", "json",
                               "--charts", str(tmp_path / "charts"), "--max-charts", "4"))
    assert (report["groups"], report["weeks"], report["windows"]) == (200, 8.0, 8 * 168)
    marks = backtest.read_labels(labels)
    assert sorted((lb.kpi, lb.shape) for lb in marks).count(("cpc", "spike")) == 30

    # The same counts from the labels, recomputed here from the alerts the command listed.
    alerts = [backtest.Alert(a["kpi"], a["window"], tuple(sorted(a["group"].items())), a["start"]) for a in report["alerts"]]

    def first_alert(lb: backtest.Label) -> int | None:
        hits = [a.start - lb.start for a in alerts if a.kpi == lb.kpi and a.group == lb.group and lb.start <= a.start < lb.end]
        return min(hits) // HOUR if hits else None

    delays = {shape: [first_alert(lb) for lb in marks if lb.shape == shape] for shape in ("spike", "step", "drop")}
    spikes = sum(d == 0 for d in delays["spike"]) / 30  # in their own hour
    steps = sum(d is not None and d < 2 for d in delays["step"]) / 30  # within 2 hours
    false = sum(not any(lb.kpi == a.kpi and lb.group == a.group and lb.start <= a.start < lb.end for lb in marks) for a in alerts)
    per_10_weeks = false / (200 * 8 / 10)
    print(f"seasonal: spikes {spikes:.0%} in their hour, steps {steps:.0%} within 2 h, drops "
          f"{sum(d is not None for d in delays['drop']) / 20:.0%}; {false} false incidents = {per_10_weeks:.2f} per 10 campaign-weeks")
    assert spikes >= 0.9 and steps >= 0.9
    assert per_10_weeks <= 1.0
    assert report["false_per_10_group_weeks"] == pytest.approx(per_10_weeks)
    assert report["rules"]["cpc"]["recall"]["spike"] == sum(d is not None for d in delays["spike"]) / 30

    # The charts: one PNG per alerting group and KPI, as many as asked for.
    charts = [Path(p) for p in report["charts"]]
    assert len(charts) == 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in charts)

    # Today's trailing-mean baseline (24 hours, same change), on the same history, for comparison.
    trailing = backtest.judge(Plan(config.from_dict(_config({"baseline": "trailing", "windows": 24}))), path)
    t_scores = backtest.score(trailing, marks)
    t_false = backtest.false_per_10_group_weeks(trailing, t_scores)
    print(f"trailing: spike recall {t_scores['cpc']['recall']['spike']:.0%}, step recall {t_scores['cpc']['recall']['step']:.0%}; "
          f"{t_false:.1f} false incidents per 10 campaign-weeks")
    assert t_false > 20 * max(per_10_weeks, 0.05)  # the daily cycle alone trips it, again and again


def test_a_small_history_gives_exactly_its_one_spike(tmp_path: Path) -> None:
    """Ten days of one campaign's exact rhythm with one ×3 spike: one alert, in that hour."""
    rows = list(history.rows(1, 2, 5, [], noise=(0.0, 0.0)))
    spike = history.START + (10 * 24 + 3) * HOUR  # day 11, 03:00
    for r in rows:
        if backtest._ms(r["start"]) == spike:
            r["measures"]["click_cost"] *= 3
    path = tmp_path / "h.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(orjson.dumps({**_config({}), "targets": {"cpc": {"drift": {}}}}))
    report = orjson.loads(_cli("backtest", str(path), "--config", str(cfg), "--format", "json"))
    assert [(a["kpi"], a["start"], a["group"]) for a in report["alerts"]] == [("cpc", spike, {"campaign": "camp-0000"})]
    assert report["rules"]["cpc"]["alerts"] == 1


def test_a_bad_labels_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"campaign": "a", "kpi": "cpc", "start": 1}\n')
    with pytest.raises(Exception, match=r"labels.jsonl:1: not a label"):
        backtest.read_labels(bad)
