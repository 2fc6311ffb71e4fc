"""``kpimon init SAMPLE``: a config from a sample of real events, which check-config accepts and replay uses."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from kpi_core import config as config_mod
from kpimon.cli import cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "trackers"
SESSION_MEASURES = ("sessions", "bounced_sessions")
SUMMED = ("pageviews", "sessions", "bounced_sessions", "leads", "orders", "revenue", "new_customers")


def _init(sample: Path, out: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["init", str(sample), "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # rich wraps at 80 columns, where a long tmp path falls


def test_init_on_a_segment_sample_gives_a_config_that_check_config_accepts_and_replay_uses(tmp_path: Path) -> None:
    out = tmp_path / "kpimon.yaml"
    said = _init(FIXTURES / "segment.jsonl", out)
    assert "29 messages (29 segment)" in said
    raw = yaml.safe_load(out.read_text())
    assert raw["topics"]["sources"] == {"segment-events": "segment"}
    assert {"bounce_rate", "session_to_order", "aov", "visitor_to_lead"} <= set(raw["kpis"])
    assert "ctr" not in raw["kpis"] and "impressions" not in raw["measures"]  # a tracker sample has no ad events
    check = CliRunner().invoke(cli, ["check-config", str(out)])
    assert check.exit_code == 0 and "ok" in check.output, check.output

    replay = CliRunner().invoke(cli, ["replay", str(FIXTURES / "segment.jsonl"), "--config", str(out)])
    assert replay.exit_code == 0, replay.output
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line in replay.stdout.splitlines():
        if line.startswith('{"snapshot"'):
            snap = orjson.loads(line)["snapshot"]
            if snap["breakdown"] == "campaign":
                for m in SUMMED:  # each measure from one phase: both phases' snapshots carry the events' measures
                    if (snap["phase"] == "sessions") == (m in SESSION_MEASURES):
                        totals[snap["group"]["campaign"]][m] += snap["measures"].get(m, 0.0)
    expected = orjson.loads((FIXTURES / "expected.json").read_bytes())["segment"]
    assert set(totals) == set(expected)
    for campaign, want in expected.items():
        for m in SUMMED:
            assert totals[campaign][m] == pytest.approx(want[m], rel=1e-9), (campaign, m)


def test_the_commented_targets_make_a_valid_config_when_uncommented(tmp_path: Path) -> None:
    out = tmp_path / "kpimon.yaml"
    _init(FIXTURES / "segment.jsonl", out)
    text = out.read_text()
    lines = text.splitlines()
    start = lines.index("# targets:")
    block = [line[2:] for line in lines[start:] if line.startswith("#   ")]
    assert block, text
    uncommented = "\n".join([*(x for x in lines if x != "targets: {}"), "targets:", *block]) + "\n"
    cfg = config_mod.from_dict(yaml.safe_load(uncommented))
    assert cfg.targets["bounce_rate"].value is not None and cfg.targets["bounce_rate"].min_denominator == 100
    # The sample's own bounce rate is written beside it: 6 of 11 sessions in the hand count.
    expected = orjson.loads((FIXTURES / "expected.json").read_bytes())["segment"]
    bounced = sum(c["bounced_sessions"] for c in expected.values())
    sessions = sum(c["sessions"] for c in expected.values())
    assert f"the sample: {bounced / sessions:.2%}" in text


@pytest.mark.parametrize("fmt", ["snowplow", "ga4"])
def test_init_recognises_each_format(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "kpimon.yaml"
    said = _init(FIXTURES / f"{fmt}.jsonl", out, "--topic", f"my-{fmt}")
    assert f" {fmt})" in said
    cfg = config_mod.load(out)
    assert cfg.topics.sources[f"my-{fmt}"].format == fmt
    if fmt == "snowplow":  # its ad events feed click and impression KPIs too
        assert "ctr" in cfg.kpis


def test_init_refuses_to_overwrite_and_explains_a_sample_it_cannot_read(tmp_path: Path) -> None:
    out = tmp_path / "kpimon.yaml"
    out.write_text("# mine\n")
    result = CliRunner().invoke(cli, ["init", str(FIXTURES / "segment.jsonl"), "-o", str(out)])
    assert "exists; pass --force" in str(result.exception)  # the CLI's main() prints it and exits 1
    assert out.read_text() == "# mine\n"
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"hello": "world"}\n')
    result = CliRunner().invoke(cli, ["init", str(junk), "-o", str(tmp_path / "other.yaml")])
    assert "no message looks like" in str(result.exception)


def test_a_sample_mixing_a_tracker_and_ad_platform_events_gets_a_topic_for_each(tmp_path: Path) -> None:
    sample = tmp_path / "mixed.jsonl"
    ads = [orjson.dumps({"type": t, "ts": 1709632800000 + i, "campaign": "seg-spring-sale", "channel": "paid_search",
                         **({"cost": 0.5} if t == "click" else {})}) for i, t in enumerate(["impression"] * 20 + ["click"] * 2)]
    sample.write_bytes((FIXTURES / "segment.jsonl").read_bytes() + b"\n".join(ads) + b"\n")
    out = tmp_path / "kpimon.yaml"
    said = _init(sample, out, "--topic", "null")  # a name YAML would read as something else
    assert "51 messages (29 segment, 22 kpimon)" in said
    cfg = config_mod.load(out)
    assert cfg.topics.types() == {"ad-impressions": "impression", "ad-clicks": "click"}
    assert cfg.topics.sources["null"].format == "segment"
    assert {"ctr", "cpc", "bounce_rate"} <= set(cfg.kpis)
