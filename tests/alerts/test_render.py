from __future__ import annotations

from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from alerts.render import MAX_BLOCKS, render
from tests.support.breaches import CTR_BREACH, MAY_1_NOON, make_breach

WINDOW = "1m 2024-05-01T12:00:00Z–2024-05-01T12:01:00Z"


def assert_valid_blocks(blocks: list[dict[str, Any]]) -> None:
    """Block Kit limits, checked by slack-sdk's own block models."""
    assert 1 <= len(blocks) <= MAX_BLOCKS
    assert blocks[0]["type"] == "header"
    for block in blocks:
        assert block["type"] in ("header", "section", "context")
        Block.parse(block).validate_json()  # raises on a text over its limit


def test_one_breach_says_kpi_value_target_window_group_and_volume() -> None:
    text, blocks = render([CTR_BREACH])

    assert text == (
        "KPI breach: campaign=spring-sale\n"
        f"ctr 1.00% is below target 2.00%: 100 clicks / 10,000 impressions in window {WINDOW}"
    )
    assert blocks == [
        {"type": "header", "text": {"type": "plain_text", "text": "KPI breach: campaign=spring-sale"}},
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"*ctr* 1.00% is below target 2.00%\n100 clicks / 10,000 impressions in window {WINDOW}",
            },
        },
    ]
    assert_valid_blocks(blocks)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # a KPI where lower is better breaches above its target; currency has two decimals
        (
            dict(kpi="cpc", value=0.75, target=0.5, direction="lower", unit="currency", numerator=1234.5,
                 denominator=1646, numerator_name="click_cost", denominator_name="clicks"),
            "cpc 0.75 is above target 0.50: 1,234.50 click_cost / 1,646 clicks",
        ),
        # the global total has no dimensions
        (dict(dims=(), group={}), "KPI breach: all traffic"),
        # several dimensions, in breakdown order
        (
            dict(dims=("campaign", "channel"), group={"channel": "social", "campaign": "spring-sale"}),
            "KPI breach: campaign=spring-sale, channel=social",
        ),
        # Slack's control characters in a campaign name are escaped, so nobody gets pinged
        (dict(group={"campaign": "<!channel> & co"}), "KPI breach: campaign=&lt;!channel&gt; &amp; co"),
    ],
)
def test_text_by_case(changes: dict[str, Any], expected: str) -> None:
    text, blocks = render([make_breach(**changes)])
    assert expected in text
    assert_valid_blocks(blocks)


def test_several_breaches_of_one_group_make_one_message() -> None:
    hourly = make_breach(kpi="conversion_rate", value=0.005, target=0.01, numerator=5, denominator=1000,
                         numerator_name="orders", denominator_name="clicks", window="1h", end=MAY_1_NOON + 3_600_000)

    text, blocks = render([CTR_BREACH, hourly])

    assert text.splitlines()[0] == "2 KPI breaches: campaign=spring-sale"
    assert "conversion_rate 0.50% is below target 1.00%: 5 orders / 1,000 clicks in window 1h" in text
    assert [b["type"] for b in blocks] == ["header", "section", "section"]


def test_grafana_link_opens_the_breached_windows() -> None:
    _, blocks = render([CTR_BREACH], grafana_url="https://grafana.example/d/kpimon?orgId=1&from=now-6h")

    link = f"https://grafana.example/d/kpimon?orgId=1&amp;from={MAY_1_NOON}&amp;to={MAY_1_NOON + 60_000}"
    assert blocks[-1] == {"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{link}|Open in Grafana>"}]}
    assert_valid_blocks(blocks)


def test_too_many_breaches_stay_within_block_kit_limits() -> None:
    breaches = [make_breach(kpi=f"kpi_{i}", group={"campaign": "x" * 200}) for i in range(60)]

    text, blocks = render(breaches)

    assert len(blocks) == MAX_BLOCKS
    assert blocks[-1]["elements"][0]["text"] == "…and 12 more breaches not shown"
    assert "kpi_59 " in text  # the fallback text still has them all
    assert_valid_blocks(blocks)


def test_no_breaches_is_a_mistake() -> None:
    with pytest.raises(ValueError):
        render([])
