from __future__ import annotations

from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from alerts.render import MAX_BLOCKS, render_event, render_update
from kpi_core.incidents import AlertEvent
from tests.support.incidents import CPC_FINDING, MAY_1_NOON, OPENED, make_event, make_finding, thread_events

WINDOW = "1m 2024-05-01T12:00:00Z–2024-05-01T12:01:00Z"


def assert_valid_blocks(blocks: list[dict[str, Any]]) -> None:
    """Block Kit limits, checked by slack-sdk's own block models."""
    assert 1 <= len(blocks) <= MAX_BLOCKS
    assert blocks[0]["type"] == "header"
    for block in blocks:
        assert block["type"] in ("header", "section", "context")
        Block.parse(block).validate_json()  # raises on a text over its limit


CTR_LINE = (
    "🔴 ctr 0.42% is below target 2.00% (baseline 4.10%) · 42 clicks / 10,000 impressions · CI 0.31%–0.52% · "
    f"driven by device=mobile (60% of impressions, ctr 0.40%) · rule: target · window {WINDOW}"
)


def test_event_says_value_target_baseline_volume_interval_contributor_rule_and_window() -> None:
    text, blocks = render_event(make_event(mention="<!subteam^S123>"))

    assert text == "<!subteam^S123>\n🔴 CRITICAL · campaign=spring-sale · 1 KPI breaching\n" + CTR_LINE
    assert blocks == [
        {"type": "header", "text": {"type": "plain_text", "text": "🔴 CRITICAL · campaign=spring-sale · 1 KPI breaching"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "<!subteam^S123>"}},
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": "🔴 *ctr* 0.42% is below target 2.00% (baseline 4.10%)\n"
                "42 clicks / 10,000 impressions · CI 0.31%–0.52%\n"
                "driven by device=mobile (60% of impressions, ctr 0.40%)\n"
                f"rule: target · window {WINDOW}",
            },
        },
    ]
    assert_valid_blocks(blocks)


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        # lower is better: above its target; no baseline, interval or contributor to mention
        (make_event(severity="warning", findings=[CPC_FINDING]),
         "🟠 cpc 0.75 is above target 0.50 · 31.50 click_cost / 42 clicks · rule: target"),
        # drift: the line is the drift threshold, and the static target is mentioned too
        (make_event(findings=[make_finding(rule="drift", threshold=0.03075, interval=None, contributor=None)]),
         "0.42% is below drift threshold 3.08% (baseline 4.10%, target 2.00%) · 42 clicks / 10,000 impressions · rule: drift"),
        # no data: the measures that stopped, and for how long
        (make_event(findings=[make_finding(kpi="no_data", rule="no_data", value=0.0, threshold=None, target=None,
                                           baseline=None, unit="count", numerator=0, numerator_name="impressions/clicks",
                                           denominator=2, denominator_name="windows", interval=None, contributor=None)]),
         "🔴 CRITICAL · campaign=spring-sale · no data\n🔴 no data: no impressions/clicks in the last 2 windows · rule: no data"),
        # resolved: back to what value, and no stale volume
        (thread_events()[2],
         "✅ RESOLVED · campaign=spring-sale · 2 KPIs back to normal\n"
         "✅ ctr back to 3.10% (target 2.00%, baseline 4.10%) · rule: target"),
        # Slack's control characters in a group value are escaped, so nobody gets pinged
        (make_event(group={"campaign": "<!channel> & co"}), "campaign=&lt;!channel&gt; &amp; co"),
        # the global total
        (make_event(dims=(), group={}), "🔴 CRITICAL · all traffic · 1 KPI breaching"),
    ],
)
def test_event_text_by_case(event: AlertEvent, expected: str) -> None:
    text, blocks = render_event(event)
    assert expected in text
    assert_valid_blocks(blocks)


def test_event_links_grafana_from_the_event_or_the_default() -> None:
    own = "https://grafana.example/d/kpimon?var-window=1m&from=1&to=2"

    _, with_own = render_event(make_event(grafana_url=own), grafana_url="https://other.example/d/x")
    _, with_default = render_event(OPENED, grafana_url="https://grafana.example/d/kpimon?orgId=1")

    assert with_own[-1]["elements"][0]["text"] == f"<{own.replace('&', '&amp;')}|Open in Grafana>"
    link = f"https://grafana.example/d/kpimon?orgId=1&amp;from={MAY_1_NOON}&amp;to={MAY_1_NOON + 60_000}"
    assert with_default[-1]["elements"][0]["text"] == f"<{link}|Open in Grafana>"


def test_event_with_too_many_findings_stays_within_block_kit_limits() -> None:
    findings = [make_finding(kpi=f"kpi_{i}" + "x" * 200) for i in range(60)]

    text, blocks = render_event(make_event(findings=findings, mention="@growth-team"), change="Still firing: …")

    assert len(blocks) == MAX_BLOCKS
    assert blocks[0]["text"]["text"].startswith("UPDATE · 🔴 CRITICAL")
    assert blocks[-1]["elements"][0]["text"] == "…and 14 more KPIs not shown"  # header, mention, change and context leave 46
    assert "kpi_59" in text
    assert_valid_blocks(blocks)


@pytest.mark.parametrize(
    ("event", "previous", "expected"),
    [
        # a new KPI joins the thread
        (thread_events()[1], ("critical", ["ctr"]), "New: cpc 0.75 above target 0.50"),
        # worse: escalated, saying which KPI is critical now
        (make_event(kind="updated"), ("warning", ["ctr"]), "Escalated to critical: ctr 0.42% below target 2.00%"),
        # better: eased
        (make_event(kind="updated", severity="warning", findings=[make_finding(severity="warning")]),
         ("critical", ["ctr"]), "Eased to warning: ctr 0.42% below target 2.00%"),
        # one of two resolved while the other still fires
        (make_event(kind="updated", findings=[CPC_FINDING, make_finding(status="resolved", value=0.031)]),
         ("critical", ["ctr", "cpc"]), "Resolved: ctr back to 3.10% (target 2.00%, baseline 4.10%)"),
        # the thread resolved
        (thread_events()[2], ("critical", ["ctr", "cpc"]),
         "Resolved: ctr back to 3.10% (target 2.00%, baseline 4.10%); cpc back to 0.45 (target 0.50)"),
        # a reminder
        (make_event(kind="reminder", seq=5), ("critical", ["ctr"]), "Still firing: ctr 0.42% below target 2.00%"),
    ],
)
def test_update_text_by_change(event: AlertEvent, previous: tuple[str, list[str]], expected: str) -> None:
    severity, firing = previous
    assert render_update(event, previous_severity=severity, previously_firing=firing) == expected


def test_event_without_findings_is_a_mistake() -> None:
    with pytest.raises(ValueError):
        render_event(make_event(findings=[]))


def test_a_stale_feed_says_how_far_behind_it_is_and_that_its_kpis_are_held() -> None:
    from kpi_core import config
    from kpi_core.alerting import AlertEngine
    from kpi_core.plan import Plan

    plan = Plan(config.from_dict({"measures": {"spend": {"event": "spend", "sum": "amount"}}, "kpis": {"spend": {"measure": "spend"}},
                                  "arrival": {"spend": {"delay": "90m"}}}))
    engine = AlertEngine(plan)
    noon = 1_714_564_800_000
    [opened] = engine.check_feeds(noon + 2 * 3_600_000, {"spend": noon})
    text, blocks = render_event(opened)
    assert text == ("🟠 WARNING · feed=spend · feed stale: its KPIs are held provisional\n"
                    "🟠 spend feed 2.0 h behind the fast streams (delay 1.5 h) · "
                    "rule: feed stale · reported up to 2024-05-01T12:00:00Z, fast streams at 2024-05-01T14:00:00Z")
    assert_valid_blocks(blocks)
    assert engine.check_feeds(noon + 2 * 3_600_000 + 60_000, {"spend": noon}) == []  # still stale: nothing new
    [resolved] = engine.check_feeds(noon + 3 * 3_600_000, {"spend": noon + 2 * 3_600_000})
    assert (resolved.kind, resolved.seq, resolved.thread) == ("resolved", 2, "feed|spend")
    assert render_event(resolved)[0].splitlines()[0] == "✅ RESOLVED · feed=spend · feed caught up"
    assert render_event(resolved)[0].splitlines()[1] == ("✅ spend feed caught up: 1.0 h behind the fast streams (delay 1.5 h) · "
                                                        "rule: feed stale · reported up to 2024-05-01T14:00:00Z, fast streams at 2024-05-01T15:00:00Z")


WITHDRAWN = make_event(
    seq=2, kind="withdrawn", severity="warning",
    findings=[make_finding(CPC_FINDING, status="withdrawn", value=0.45, revised_from=0.75)],
    extra={"revision": 3, "revised": {"click_cost": [31.5, 18.9]}},
)


def test_a_withdrawn_incident_says_so_with_the_revised_value_and_what_was_alerted_on() -> None:
    text, blocks = render_event(WITHDRAWN)
    assert text.splitlines() == [
        "↩️ WITHDRAWN · campaign=spring-sale · revised data: 1 KPI not breaching after all",
        "↩️ cpc withdrawn: revised to 0.45 (alerted on 0.75 above target 0.50) · rule: target · "
        "window 1m 2024-05-01T12:00:00Z–2024-05-01T12:01:00Z",
    ]
    assert_valid_blocks(blocks)
    assert render_update(WITHDRAWN, previous_severity="warning", previously_firing=["cpc"]) == (
        "Withdrawn: the window's data was revised (version 3: click_cost 31.50 → 18.90). "
        "cpc withdrawn: revised to 0.45 (alerted on 0.75 above target 0.50). This alert should not have opened.")


def test_one_kpi_withdrawn_while_another_still_fires_is_an_update() -> None:
    event = make_event(kind="updated", findings=[make_finding(), *WITHDRAWN.findings], extra=WITHDRAWN.extra)
    assert render_update(event, previous_severity="critical", previously_firing=["ctr", "cpc"]) == (
        "Withdrawn (the window's data was revised (version 3: click_cost 31.50 → 18.90)): "
        "cpc withdrawn: revised to 0.45 (alerted on 0.75 above target 0.50)")


def test_a_seasonal_drift_says_the_expected_range_for_this_hour_and_how_unusual_the_value_is() -> None:
    finding = make_finding(CPC_FINDING, rule="drift", value=0.41, threshold=0.30, target=None, baseline=0.26,
                           expected=(0.22, 0.30), z=4.21, p_value=1.3e-5, when="09:00 on Tuesdays")
    text, blocks = render_event(make_event(severity="warning", findings=[finding]))
    assert ("🟠 cpc 0.41, expected 0.22–0.30 at 09:00 on Tuesdays (4.2 sd above expected, p = 1e-05) · "
            "31.50 click_cost / 42 clicks · rule: drift") in text
    assert_valid_blocks(blocks)
    assert render_update(make_event(kind="reminder", findings=[finding])) == (
        "Still firing: cpc 0.41, expected 0.22–0.30 at 09:00 on Tuesdays (4.2 sd above expected, p = 1e-05)")
