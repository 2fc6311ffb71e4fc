"""deploy/grafana: the committed dashboards are the generator's output, and they hang together
with the provisioning, the recording rules and each other. Their queries run against a real
Prometheus in tests/integration/test_dashboards.py."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = ("campaign-kpis.json", "pipeline-health.json")
# Grafana's own variables; every other $name must be a template variable of the dashboard.
BUILTIN_VARIABLES = {"__interval", "__rate_interval", "__range", "__interval_ms", "__range_s", "__auto"}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kpimon_dashboards", ROOT / "deploy" / "tools" / "dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return load_generator()


def dashboard(name: str) -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboards" / name).read_text())


def exprs(dash: dict[str, Any]) -> list[str]:
    """Every PromQL of a dashboard: panel targets, variable queries and annotations."""
    out = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    out += [v["query"] for v in dash["templating"]["list"]]
    out += [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]
    return out


def test_committed_json_is_the_generator_output(generator: ModuleType) -> None:
    rendered = generator.render()
    assert sorted(rendered) == sorted(DASHBOARDS)
    for name, text in rendered.items():
        committed = (GRAFANA / "dashboards" / name).read_text()
        assert committed == text, f"{name} is stale: run python deploy/tools/dashboards.py"


def test_check_mode_reports_a_stale_file(generator: ModuleType, tmp_path: Path) -> None:
    assert generator.main(["--out", str(tmp_path)]) == 0
    assert generator.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "campaign-kpis.json").write_text("{}")
    assert generator.main(["--check", "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize("name", DASHBOARDS)
def test_panels_use_the_provisioned_datasource(name: str) -> None:
    [ds] = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    dash = dashboard(name)
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == ds["uid"], p["title"]
            assert all(t["datasource"]["uid"] == ds["uid"] for t in p["targets"]), p["title"]
    for v in dash["templating"]["list"]:
        assert v["datasource"]["uid"] == ds["uid"], v["name"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_layout_has_unique_ids_and_no_overlap(name: str) -> None:
    panels = dashboard(name)["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    taken: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_variable_used_is_defined(name: str) -> None:
    dash = dashboard(name)
    defined = {v["name"] for v in dash["templating"]["list"]}
    texts = exprs(dash) + [p["title"] for p in dash["panels"]] + [p.get("repeat", "") and f"${p['repeat']}" for p in dash["panels"]]
    used = {m for text in texts for m in re.findall(r"\$\{?(\w+)", text)}
    assert used - defined - BUILTIN_VARIABLES == set()


def test_campaign_variables_match_the_alert_links() -> None:
    # kpi_core.alerting links alerts to the dashboard with var-window and var-<dimension>.
    variables = {v["name"]: v for v in dashboard("campaign-kpis.json")["templating"]["list"]}
    assert {"window", "campaign", "channel", "kpi"} <= variables.keys()
    assert variables["window"]["query"] == "label_values(kpimon_kpi_value, window)"
    for multi in ("campaign", "channel", "kpi"):
        assert variables[multi]["multi"] and variables[multi]["includeAll"], multi


def test_kpis_are_drawn_against_their_targets() -> None:
    [repeated] = [p for p in dashboard("campaign-kpis.json")["panels"] if p.get("repeat") == "kpi"]
    metrics = [t["expr"].split("{")[0] for t in repeated["targets"]]
    assert metrics == ["kpimon_kpi_value", "kpimon_kpi_target"]
    assert all('breakdown="campaign"' in t["expr"] for t in repeated["targets"])


def test_breaching_table_and_incident_annotations() -> None:
    dash = dashboard("campaign-kpis.json")
    [table] = [p for p in dash["panels"] if p["type"] == "table"]
    assert all("kpimon_alert_firing" in t["expr"] and "== 1" in t["expr"] for t in table["targets"])
    assert all(t["instant"] for t in table["targets"])
    annotations = {a["name"]: a["expr"] for a in dash["annotations"]["list"] if "expr" in a}
    assert {"KPI incidents", "Incident opened", "Incident resolved"} <= annotations.keys()
    for name in ("Incident opened", "Incident resolved"):  # changes of kpimon_alert_firing
        assert "kpimon_alert_firing" in annotations[name] and "offset $__interval" in annotations[name]


def test_ratio_rollups_come_from_recording_rules() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "kpimon-recording.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"]}
    used = {m for e in exprs(dashboard("campaign-kpis.json")) for m in re.findall(r"\b(window\w*:kpimon_\w+:ratio)\b", e)}
    assert used == recorded, "every roll-up has a panel, and no panel names a rule that does not exist"
    for name in DASHBOARDS:
        for e in exprs(dashboard(name)):
            assert "avg(" not in e and "avg by" not in e, f"ratios are never averaged: {e}"


def test_pipeline_health_covers_the_pipeline() -> None:
    text = "\n".join(exprs(dashboard("pipeline-health.json")))
    for metric in (
        "rate(kpimon_events_total", "kpimon_consumer_lag", "kpimon_events_late_total", "kpimon_events_invalid_total",
        "kpimon_snapshots_total", "kpimon_alert_events_total", "kpimon_alerts_total", "process_start_time_seconds",
        "kpimon_worker_start_time_seconds", "process_resident_memory_bytes",
    ):
        assert metric in text, metric


def test_provider_loads_the_dashboards_directory() -> None:
    [provider] = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "kpimon.yml").read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
