"""The buttons on an incident's message, the feedback it shows, and its chart."""

from __future__ import annotations

import io

import matplotlib.image
import pytest

from alerts.charts import HEIGHT, WIDTH, bar_chart, breaching, incident_chart
from alerts.render import FEEDBACK_BLOCK, refresh_feedback, render_event
from kpi_core.feedback import ACK, FALSE_ALARM, SNOOZE, IncidentFeedback, Mark, Ref
from tests.support.incidents import CTR_FINDING, MAY_1_NOON, OPENED, make_event, thread_events

REF = Ref.of(OPENED, OPENED.id)


def buttons(blocks: list[dict]) -> list[str]:
    (actions,) = [b for b in blocks if b.get("block_id") == FEEDBACK_BLOCK] or [{"elements": []}]
    return [e["action_id"] for e in actions["elements"]]


def test_a_firing_incident_has_the_four_buttons_each_carrying_its_incident() -> None:
    text, blocks = render_event(OPENED, ref=REF)
    assert buttons(blocks) == ["kpimon_ack", "kpimon_snooze", "kpimon_silence", "kpimon_false_alarm"]
    (actions,) = [b for b in blocks if b["type"] == "actions"]
    assert [Ref.from_value(e["value"]) for e in actions["elements"]] == [REF] * 4
    assert render_event(OPENED) == (text, [b for b in blocks if b["type"] != "actions"])  # no buttons without Socket Mode


def test_feedback_shows_who_and_when_and_pressed_buttons_go() -> None:
    at = MAY_1_NOON + 90_000
    fb = IncidentFeedback(REF, {ACK: Mark("U0ANNA", at)})
    text, blocks = render_event(OPENED, ref=REF, feedback=fb)
    assert buttons(blocks) == ["kpimon_snooze", "kpimon_silence", "kpimon_false_alarm"]
    line = f"✔️ Acknowledged by <@U0ANNA> <!date^{at // 1000}^{{date_short_pretty}} {{time}}|2024-05-01 12:01 UTC>"
    assert text.endswith("\n" + line)
    assert {"type": "mrkdwn", "text": line} in [e for b in blocks if b["type"] == "context" for e in b["elements"]]


def test_a_resolved_or_false_alarm_incident_keeps_its_feedback_but_no_buttons() -> None:
    resolved = thread_events()[2]
    fb = IncidentFeedback(REF, {SNOOZE: Mark("U0ANNA", MAY_1_NOON)})
    text, blocks = render_event(resolved, ref=REF, feedback=fb)
    assert buttons(blocks) == [] and "💤 Snoozed until recovered by <@U0ANNA>" in text
    closed = IncidentFeedback(REF, {FALSE_ALARM: Mark("U0BOB", MAY_1_NOON)})
    _, blocks = render_event(OPENED, ref=REF, feedback=closed)
    assert buttons(blocks) == []


def test_a_click_edits_the_message_slack_sent_with_it() -> None:
    text, blocks = render_event(OPENED, ref=REF)
    fb = IncidentFeedback(REF, {ACK: Mark("U0ANNA", MAY_1_NOON)})
    new_text, new_blocks = refresh_feedback(text, blocks, fb)
    assert (new_text, new_blocks) == render_event(OPENED, ref=REF, feedback=fb)
    # Again with more feedback: the old line and buttons are replaced, not added to.
    fb.marks[FALSE_ALARM] = Mark("U0BOB", MAY_1_NOON + 1000)
    assert refresh_feedback(new_text, new_blocks, fb) == render_event(OPENED, ref=REF, feedback=fb)


def test_the_incident_chart_is_a_png_of_the_fixed_size_with_its_breaching_windows() -> None:
    history = [[MAY_1_NOON - (10 - i) * 60_000, 0.04 - 0.001 * i] for i in range(10)] + [[MAY_1_NOON, 0.0042]]
    event = make_event(extra={"history": {"ctr": history}})
    png = incident_chart(event)
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and image.shape[:2] == (HEIGHT, WIDTH)
    assert [v for _, v in history if breaching(CTR_FINDING, v)] == [0.0042]
    assert incident_chart(OPENED) is None  # no history: nothing to draw


@pytest.mark.parametrize("bars", [[("alpha", 0.02), ("beta", None)], [("only", 1.0)]])
def test_the_digest_chart_has_the_same_size(bars: list) -> None:
    image = matplotlib.image.imread(io.BytesIO(bar_chart("CTR by campaign", bars, target=0.01)), format="png")
    assert image.shape[:2] == (HEIGHT, WIDTH)


def test_a_total_gets_no_silence_button_and_an_oversized_value_no_buttons() -> None:
    total = make_event(thread="1m|total", dims=(), group={})
    _, blocks = render_event(total, ref=Ref.of(total, total.id))
    assert buttons(blocks) == ["kpimon_ack", "kpimon_snooze", "kpimon_false_alarm"]
    long = make_event(group={"campaign": "x" * 2100})
    _, blocks = render_event(long, ref=Ref.of(long, long.id))
    assert buttons(blocks) == []


def test_a_campaign_named_like_math_is_drawn_as_written() -> None:
    event = make_event(group={"campaign": "Win $100 {or $200"}, extra={"history": {"ctr": [[MAY_1_NOON, 0.0042]]}})
    assert incident_chart(event)[:8] == b"\x89PNG\r\n\x1a\n"
    assert bar_chart("ctr", [("Win $100 {or $200", 0.1)])[:4] == b"\x89PNG"
