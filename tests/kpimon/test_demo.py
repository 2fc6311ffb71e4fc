"""The demo's live view (kpimon/demo.py): snapshots and alerts in, a table and alert lines out."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from kpi_core import config as config_mod
from kpi_core.incidents import AlertEvent, Finding
from kpimon.demo import LiveView

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "kpimon.yaml"


def _snap(campaign: str, start: str, kpis: dict, provisional: dict | None = None, **extra) -> dict:
    return {"window": "30s", "breakdown": "campaign", "group": {"campaign": campaign}, "start": start, "phase": "events",
            "measures": {}, "kpis": kpis, "provisional": provisional or {}, **extra}


def _text(view: LiveView) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(view.render("header"))
    return console.export_text()


def _row(text: str, campaign: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(campaign))  # the table's row, not an alert


def test_rows_show_the_latest_window_against_targets_and_provisional_values() -> None:
    view = LiveView(config_mod.load(DEMO), window="30s")
    view.apply_snapshot(_snap("camp-001", "2024-05-01T12:00:30Z", {"ctr": 0.05, "cpc": 1.25}, {"cpa": 12.5}))
    view.apply_snapshot(_snap("camp-001", "2024-05-01T12:00:00Z", {"ctr": 0.01}))  # an older window: ignored
    view.apply_snapshot({**_snap("camp-001", "2024-05-01T12:00:30Z", {"bounce_rate": 0.4}), "phase": "sessions"})
    view.apply_snapshot({**_snap("camp-002", "2024-05-01T12:00:30Z", {"ctr": 0.5}), "window": "1h"})  # another window
    view.apply_snapshot({**_snap("camp-002", "2024-05-01T12:00:30Z", {"ctr": 0.5}), "breakdown": "channel"})
    row = _row(_text(view), "camp-001")
    assert "12:00:30" in row
    assert "5.00%" in row and "1.25" in row and "40.00%" in row
    assert "≥1.50%" in _text(view) and "≤3.00" in _text(view)  # targets head their columns
    assert "~12.50" in row  # CPA waits for the spend reports
    assert "camp-002" not in _text(view)
    assert view.snapshots == 3  # campaign snapshots of the view's window only


def test_an_alert_marks_its_campaign_and_is_listed_until_it_resolves() -> None:
    view = LiveView(config_mod.load(DEMO), window="30s")
    view.apply_snapshot(_snap("camp-003", "2024-05-01T12:01:00Z", {"ctr": 0.008}))
    finding = Finding(kpi="ctr", rule="target", severity="warning", value=0.008, threshold=0.015, target=0.015, baseline=None,
                      direction="higher", unit="percent", numerator=10, numerator_name="clicks", denominator=1250,
                      denominator_name="impressions")
    event = AlertEvent(thread="t", seq=1, kind="firing", window="30s", start=1714564860000, end=1714564890000,
                       dims=("campaign",), group={"campaign": "camp-003"}, severity="warning", findings=[finding])
    view.apply_alert(event.to_json())
    text = _text(view)
    assert "FIRING ctr" in _row(text, "camp-003")
    assert "campaign=camp-003 · 1 KPI breaching" in text and "ctr 0.80% is below target 1.50%" in text
    resolved = event.to_json()
    resolved.update(seq=2, kind="resolved")
    resolved["findings"][0]["status"] = "resolved"
    view.apply_alert(resolved)
    assert "FIRING" not in _row(_text(view), "camp-003")
