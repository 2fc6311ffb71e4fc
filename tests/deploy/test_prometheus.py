"""deploy/prometheus: promtool accepts the configs and rules, the rules' unit tests pass,
and a deliberately broken copy fails each check (so these tests can fail)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
CONFIGS = ("prometheus.yml", "prometheus.compose.yml")
RULES = ("rules/kpimon-recording.yml", "rules/kpimon-alerts.yml")
RULE_TESTS = ("tests/kpimon-recording.test.yml", "tests/kpimon-alerts.test.yml")


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool comes from Debian's prometheus package (scripts/bootstrap.sh)"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def ok(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@pytest.mark.parametrize("config", CONFIGS)
def test_config_is_valid(config: str) -> None:
    result = promtool("check", "config", config)
    assert ok(result), output(result)
    assert "2 rule files found" in result.stdout  # both rule files are loaded, not just the scrape config


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", *RULES)
    assert ok(result), output(result)


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", *RULE_TESTS)
    assert ok(result), output(result)


def test_local_config_scrapes_localhost_and_compose_config_the_worker_service() -> None:
    local, compose = (yaml.safe_load((PROM / name).read_text()) for name in CONFIGS)
    assert _targets(local) == ["localhost:6066"]
    assert _targets(compose) == ["worker:6066"]
    # Apart from the target, the two must not drift apart.
    for cfg in (local, compose):
        cfg["scrape_configs"][0]["static_configs"] = []
    assert local == compose


def _targets(cfg: dict) -> list[str]:
    [job] = [j for j in cfg["scrape_configs"] if j["job_name"] == "kpimon"]
    return [t for sc in job["static_configs"] for t in sc["targets"]]


def _rules(path: str) -> list[dict]:
    return [r for g in yaml.safe_load((PROM / path).read_text())["groups"] for r in g["rules"]]


def test_every_rule_has_a_unit_test() -> None:
    recording = {r["record"] for r in _rules(RULES[0])}
    alerts = {r["alert"] for r in _rules(RULES[1])}
    rec_tests = yaml.safe_load((PROM / RULE_TESTS[0]).read_text())["tests"]
    alert_tests = yaml.safe_load((PROM / RULE_TESTS[1]).read_text())["tests"]
    tested_exprs = " ".join(t["expr"] for test in rec_tests for t in test.get("promql_expr_test", []))
    fired = {
        t["alertname"] for test in alert_tests for t in test.get("alert_rule_test", []) if t.get("exp_alerts")
    }
    assert {r for r in recording if r not in tested_exprs} == set()
    assert alerts - fired == set(), "every alert needs a test case in which it fires"


def test_alerts_carry_severity_and_explanations() -> None:
    for rule in _rules(RULES[1]):
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]
        assert "for" in rule, f"{rule['alert']} would fire on a single bad scrape"


def test_rollups_never_average() -> None:
    for rule in _rules(RULES[0]):
        assert "avg" not in rule["expr"] and "kpimon_kpi_value" not in rule["expr"], rule["record"]


# -- the checks can fail ----------------------------------------------------------------


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A scratch copy of deploy/prometheus to break."""
    copy = tmp_path / "prometheus"
    shutil.copytree(PROM, copy)
    return copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}: update this test"
    path.write_text(text.replace(old, new, 1))


def test_a_missing_rule_file_fails_check_config(broken: Path) -> None:
    (broken / RULES[1]).unlink()
    assert not ok(promtool("check", "config", "prometheus.yml", cwd=broken))


def test_bad_promql_fails_check_rules(broken: Path) -> None:
    _edit(broken / RULES[1], "up{job=\"kpimon\"} == 0", "up{job=\"kpimon\" == 0")
    assert not ok(promtool("check", "rules", *RULES, cwd=broken))


def test_averaging_ratios_fails_the_recording_unit_tests(broken: Path) -> None:
    _edit(
        broken / RULES[0],
        'sum by (window) (kpimon_measure_value{breakdown="campaign", measure="clicks"})\n'
        '            / (sum by (window) (kpimon_measure_value{breakdown="campaign", measure="impressions"}) > 0)',
        'avg by (window) (kpimon_measure_value{breakdown="campaign", measure="clicks"}\n'
        '            / ignoring(measure) kpimon_measure_value{breakdown="campaign", measure="impressions"})',
    )
    assert ok(promtool("check", "rules", RULES[0], cwd=broken))  # still valid PromQL ...
    result = promtool("test", "rules", RULE_TESTS[0], cwd=broken)
    assert not ok(result)  # ... but the wrong number
    assert "window:kpimon_ctr:ratio" in output(result)


def test_a_laxer_threshold_fails_the_alert_unit_tests(broken: Path) -> None:
    _edit(broken / RULES[1], "> 0.05", "> 0.5")
    result = promtool("test", "rules", RULE_TESTS[1], cwd=broken)
    assert not ok(result)
    assert "KpimonDeadLetterRate" in output(result)
