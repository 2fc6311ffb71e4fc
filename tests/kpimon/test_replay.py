"""``kpimon replay`` over files: the catalogue's worked examples come out exactly, historical data
keeps its own windows, and config errors are readable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from kpimon.cli import cli

T = 1_714_564_800_000  # 2024-05-01T12:00:00Z
BASE = {"campaign": "spring", "channel": "email"}


def _write(tmp_path: Path, events: list[dict[str, Any]], name: str = "events.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(b"\n".join(orjson.dumps({**BASE, **e}) for e in events) + b"\n")
    return path


def _replay(path: Path, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli, ["replay", str(path), *args])
    assert result.exit_code == 0, result.output
    return [orjson.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def _kpis(rows: list[dict[str, Any]], breakdown: str = "campaign", window: str = "1h") -> dict[str, Any]:
    """Every final KPI of the campaign's first 1h window, over both phases and versions.

    The hour, not the minute: in the built-in config only hourly windows wait for the
    delayed sources (spend, leads, orders), so money KPIs are final there.
    """
    out: dict[str, Any] = {}
    for row in rows:
        snap = row.get("snapshot")
        if snap and snap["breakdown"] == breakdown and snap["window"] == window and snap["start"] == "2024-05-01T12:00:00Z":
            out.update(snap["kpis"])
    return out


def _spend(amount: float, ts: int = T) -> dict[str, Any]:
    return {"type": "spend", "ts": ts, "amount": amount}


def _order(i: int, revenue: float, *, new: bool = True, ts: int = T + 1000) -> dict[str, Any]:
    return {"type": "order", "ts": ts, "order_id": f"o{i}", "revenue": revenue, "customer_id": f"c{i}", "new_customer": new}


def _sessions(n: int) -> list[dict[str, Any]]:
    return [{"type": "pageview", "ts": T + i, "visitor_id": f"v{i}", "session_id": f"s{i}", "page": "/"} for i in range(n)]


def _leads(n: int, stage: str = "lead") -> list[dict[str, Any]]:
    return [{"type": "lead", "ts": T + 2000 + i, "lead_id": f"l{i}", "stage": stage} for i in range(n)]


# Each row is one worked example from the KPI catalogue.
WORKED = [
    # ROI: an email campaign cost 8,000 and brought 10,000 in revenue -> 25%
    ("roi", [_spend(8000), _order(1, 10_000)], 0.25),
    # CPL: a PPC campaign cost 1,000 and produced 10 leads -> 100
    ("cpl", [_spend(1000), *_leads(10)], 100.0),
    # Conversion: 200 visitors and 20 orders -> 10%
    ("session_to_order", [*_sessions(200), *(_order(i, 10) for i in range(20))], 0.10),
    # Visitor -> lead: 1,000 sessions and 100 leads -> 10%
    ("visitor_to_lead", [*_sessions(1000), *_leads(100)], 0.10),
    # CAC: total cost 500,000 and 5,000 new customers. The catalogue prints 500, but
    # 500,000 / 5,000 is 100; the formula (cost / new customers) is what is tested.
    ("cac", [_spend(500_000), *(_order(i, 1) for i in range(5000))], 100.0),
    # CAC at the catalogue's stated 500: 500,000 of cost over 1,000 new customers
    ("cac", [_spend(500_000), *(_order(i, 1) for i in range(1000))], 500.0),
    # ROAS: 10 of revenue for every 1 of ad spend -> 10
    ("roas", [_spend(100), _order(1, 1000)], 10.0),
    # Profit per acquisition: 130 of revenue per new customer at a CAC of 80 -> 50
    ("profit_per_acquisition", [_spend(160), _order(1, 130), _order(2, 130)], 50.0),
]


@pytest.mark.parametrize(("kpi", "events", "expected"), WORKED, ids=[w[0] for w in WORKED])
def test_catalogue_worked_examples(tmp_path: Path, kpi: str, events: list[dict[str, Any]], expected: float) -> None:
    kpis = _kpis(_replay(_write(tmp_path, events)))
    assert kpis[kpi] == pytest.approx(expected, rel=1e-12)


def test_every_catalogue_kpi_is_reported_and_zero_denominators_are_missing(tmp_path: Path) -> None:
    events = [{"type": "impression", "ts": T}, {"type": "click", "ts": T + 1, "cost": 2.0}, *_sessions(4)]
    kpis = _kpis(_replay(_write(tmp_path, events)))
    from kpi_core.config import load

    assert set(kpis) == set(load().enabled_kpis())
    assert kpis["ctr"] == 1.0
    assert kpis["cpm"] == 2000.0  # cost 2 / 1 impression x 1000
    assert kpis["bounce_rate"] == 1.0  # four one-page sessions
    assert kpis["unique_visitors"] == 4.0
    assert kpis["roas"] == 0.0  # no revenue over a cost of 2: zero, not missing
    for missing in ("aov", "cac", "nps", "lead_to_mql", "sales_growth", "cpl"):
        assert kpis[missing] is None, missing


def test_sales_growth_against_the_previous_window(tmp_path: Path) -> None:
    config = tmp_path / "kpimon.yaml"
    config.write_text("windows: [{size: 1m}]\nmeasures: {revenue: {event: order, sum: revenue}}\nkpis: {sales_growth: {change: revenue}}\n")
    events = [_order(1, 100.0, ts=T + 1000), _order(2, 150.0, ts=T + 61_000)]
    rows = _replay(_write(tmp_path, events), "--config", str(config))
    growth = [r["snapshot"]["kpis"]["sales_growth"] for r in rows if "snapshot" in r and r["snapshot"]["breakdown"] == "campaign"]
    assert growth == [None, 0.5]  # the first window has no previous one


def test_nps_from_surveys(tmp_path: Path) -> None:
    scores = [10, 9, 9, 8, 7, 6, 3, 10, 9, 0]  # 5 promoters, 3 detractors of 10
    events = [{"type": "survey", "ts": T + i, "score": s} for i, s in enumerate(scores)]
    assert _kpis(_replay(_write(tmp_path, events)))["nps"] == pytest.approx(20.0)


def test_historical_events_keep_their_windows_and_alerts_show(tmp_path: Path) -> None:
    config = tmp_path / "kpimon.yaml"
    config.write_text(
        "windows: [{size: 1m}]\n"
        "measures: {clicks: {event: click}, impressions: {event: impression}}\n"
        "kpis: {ctr: {ratio: [clicks, impressions], unit: percent}}\n"
        "targets: {ctr: {value: 5%}}\n"
    )
    events = [{"type": "impression", "ts": "2024-05-01T12:00:30+02:00"} for _ in range(100)]
    events.append({"type": "click", "ts": "2024-05-01T12:00:31+02:00", "cost": 1})
    rows = _replay(_write(tmp_path, events), "--config", str(config))
    snaps = [r["snapshot"] for r in rows if "snapshot" in r and r["snapshot"]["breakdown"] == "campaign"]
    assert [(s["start"], s["end"], s["kpis"]["ctr"]) for s in snaps] == [("2024-05-01T10:00:00Z", "2024-05-01T10:01:00Z", 0.01)]
    alerts = [r["alert"] for r in rows if "alert" in r and r["alert"]["dims"] == ["campaign"]]
    assert [(a["id"], a["kind"], a["severity"], a["start"], a["group"]) for a in alerts] == [
        ("1m|campaign|spring#1", "opened", "critical", T - 2 * 3_600_000, {"campaign": "spring"})
    ]
    (finding,) = alerts[0]["findings"]
    assert finding == {
        "kpi": "ctr", "rule": "target", "severity": "critical", "value": 0.01, "threshold": 0.05, "target": 0.05,
        "baseline": None, "direction": "higher", "unit": "percent", "numerator": 1.0, "numerator_name": "clicks",
        "denominator": 100.0, "denominator_name": "impressions", "interval": None, "contributor": None, "status": "firing",
        "revised_from": None, "expected": None, "z": None, "p_value": None, "when": None,
        # A plain target has no p-value, so no q-value; the total is this campaign (one root cause).
        "q_value": None, "change": None, "reference": None, "drivers": None,
        "explains": [{"breakdown": "total", "group": {}, "value": 0.01, "share": 1.0, "wider": True}],
    }


def test_custom_funnel_step_declared_in_yaml(tmp_path: Path) -> None:
    config = tmp_path / "kpimon.yaml"
    config.write_text(
        "windows: [{size: 1m}]\n"
        "measures:\n"
        "  payment_views: {event: pageview, where: {page: {prefix: /checkout/payment}}}\n"
        "  purchases: {event: order}\n"
        "kpis:\n"
        "  payment_to_purchase: {ratio: [purchases, payment_views], unit: percent}\n"
    )
    pv = [{"type": "pageview", "ts": T + i, "visitor_id": "v", "session_id": f"s{i}", "page": p} for i, p in enumerate(["/checkout/payment", "/checkout/payment?x=1", "/", "/checkout/payment", "/about"])]
    rows = _replay(_write(tmp_path, [*pv, _order(1, 50)]), "--config", str(config))
    assert _kpis(rows, window="1m") == {"payment_to_purchase": pytest.approx(1 / 3)}


def test_csv_input_and_table_format(tmp_path: Path) -> None:
    csv = tmp_path / "events.csv"
    csv.write_text("type,ts,campaign,channel,cost\nimpression,1714564800000,spring,email,\nimpression,1714564800001,spring,email,\nclick,1714564800002,spring,email,0.5\n")
    rows = _replay(csv)
    assert _kpis(rows)["ctr"] == 0.5
    result = CliRunner().invoke(cli, ["replay", str(csv), "--format", "table"])
    assert result.exit_code == 0 and "50.00%" in result.stdout


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        # an unknown measure in a KPI
        ("measures: {clicks: {event: click}}\nkpis: {ctr: {ratio: [clicks, impresions]}}\n", "kpis.ctr.ratio[1]: unknown measure 'impresions'"),
        # a typo in a KPI name inside a target
        ("measures: {clicks: {event: click}}\nkpis: {ctr: {measure: clicks}}\ntargets: {crt: {value: 1}}\n", "targets.crt: unknown KPI 'crt' (did you mean 'ctr'?)"),
        # a window that cannot be parsed
        ("windows: [{size: 1 fortnight}]\nmeasures: {}\nkpis: {}\n", "windows[0].size: expected a duration such as 30s, 1m, 1h or 1d, got '1 fortnight'"),
        # a filter on an attribute that no event type carries
        ("measures: {x: {event: click, where: {colour: red}}}\nkpis: {}\n", "measures.x.where.colour: no click event carries the attribute 'colour'"),
    ],
)
def test_check_config_names_the_field(tmp_path: Path, yaml_text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    result = CliRunner().invoke(cli, ["check-config", str(path)])
    assert result.exit_code == 2
    assert expected in " ".join(result.output.split())


def test_check_config_accepts_the_default(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["check-config", str(Path(__file__).resolve().parents[2] / "kpi_core" / "default.yaml")])
    assert result.exit_code == 0, result.output
    assert "35 KPIs" in result.output


def test_late_events_are_reported_not_silently_dropped(tmp_path: Path) -> None:
    # Two hours of clicks, then the ad platform's spend report for the first hour: in file
    # order the report is far behind the event time already read, so it cannot count.
    config = tmp_path / "kpimon.yaml"
    config.write_text(
        "windows: [{size: 1h}]\nallowed_lateness: 10s\n"
        "measures: {clicks: {event: click}, spend: {event: spend, sum: amount}}\n"
        "kpis: {cpc: {ratio: [spend, clicks], unit: currency, direction: lower}}\n"
    )
    clicks = [{"type": "click", "ts": T + i * 600, "cost": 0.0} for i in range(12_000)]  # more than one replay batch
    result = CliRunner().invoke(cli, ["replay", str(_write(tmp_path, [*clicks, _spend(30.0, T + 1_000)])), "--config", str(config)])
    assert result.exit_code == 0, result.output
    rows = [orjson.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["late"] for r in rows if "late" in r] == [{"type": "spend", "ts": T + 1_000, "campaign": "spring", "channel": "email", "amount": 30.0}]
    assert "late events not counted" in result.stderr and "spend=1" in result.stderr


def test_replay_says_how_restated_reports_were_counted(tmp_path: Path) -> None:
    # The built-in config restates spend by campaign and channel, the higher report_version winning.
    spend = [{"type": "spend", "ts": T, "campaign": "spring", "channel": "email", "amount": a, "report_version": v}
             for a, v in ((100.0, 1), (97.0, 3), (98.0, 2))]
    path = _write(tmp_path, spend)
    result = CliRunner().invoke(cli, ["replay", str(path)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())  # the console wraps long lines
    assert "restated reports: 1 replaced the report counted for their key, 1 were older versions than it and were not counted" in said
    rows = [orjson.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    hourly = [r["snapshot"] for r in rows if "snapshot" in r and r["snapshot"]["window"] == "1h" and r["snapshot"]["breakdown"] == "campaign"
              and r["snapshot"]["phase"] == "events"]
    assert [(s["version"], s["measures"]["spend"]) for s in hourly] == [(1, 97.0), (2, 97.0)]
