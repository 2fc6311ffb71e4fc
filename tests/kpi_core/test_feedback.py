"""Slack feedback: a click's payload, its decision, and the fold of the feedback topic."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kpi_core.feedback import (
    FALSE_ALARM,
    SILENCE_MS,
    Click,
    FeedbackSet,
    InvalidClick,
    Ref,
    allowed,
    decide,
    incident_record,
    parse_click,
)
from tests.support.incidents import OPENED, make_event

REF = Ref.of(OPENED, OPENED.id)


def payload(action: str = "ack", user: str = "U0ANNA", action_ts: str = "1764930000.123456", value: str | None = None,
            **extra: Any) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user, "username": "anna"},
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C00000001"},
        "actions": [{"action_id": f"kpimon_{action}", "block_id": "kpimon_feedback", "type": "button",
                     "value": REF.to_value() if value is None else value, "action_ts": action_ts}],
        **extra,
    }


def test_a_click_is_read_from_the_payload_with_its_incident_and_slack_time() -> None:
    click = parse_click(payload("snooze"))
    assert click == Click(REF, "snooze", "U0ANNA", 1764930000123, "1764930000.123456", "C00000001", "1700000000.000100")
    assert click.ref == Ref("1m|campaign|spring-sale#1", "1m|campaign|spring-sale", {"campaign": "spring-sale"}, ("ctr",), ("target",))
    assert click.key == "click|1m|campaign|spring-sale#1|snooze|1764930000.123456|U0ANNA"


def test_other_payloads_are_not_ours_and_a_broken_kpimon_button_is_refused() -> None:
    assert parse_click({"type": "view_submission"}) is None
    assert parse_click({**payload(), "actions": [{"action_id": "other_app", "action_ts": "1.0"}]}) is None
    with pytest.raises(InvalidClick, match="unknown kpimon action 'reboot'"):
        parse_click(payload("reboot"))
    with pytest.raises(InvalidClick, match="not a kpimon incident"):
        parse_click(payload(value="{}"))
    with pytest.raises(InvalidClick, match="lacks the user"):
        parse_click({**payload(), "user": {}})


def test_the_first_click_of_each_action_counts_and_a_repeat_changes_nothing() -> None:
    fs = FeedbackSet()
    first = parse_click(payload("ack", "U0ANNA", "1764930000.000001"))
    later = parse_click(payload("ack", "U0BOB", "1764930060.000001"))
    for click in (first, later, first):  # the first delivered again (a Slack retry)
        for key, value in decide(click, fs.get(click.ref.incident), permitted=True).records:
            assert fs.apply(key, value) is None
    fb = fs.get(REF.incident)
    assert (fb.marks["ack"].user, fb.marks["ack"].at) == ("U0ANNA", 1764930000000)
    assert fs.knows(first) and fs.counts() == {("target", "acknowledged"): 1}


def test_precision_is_incidents_not_false_alarms_over_incidents_shown() -> None:
    fs = FeedbackSet()
    for seq in (1, 3, 5, 7):
        event = make_event(seq=seq)
        assert fs.apply(*incident_record(event, event.id, "C1", f"1.{seq}")) is None
    false = Ref.of(make_event(seq=3), make_event(seq=3).id)
    click = parse_click(payload(FALSE_ALARM, value=false.to_value()))
    for key, value in decide(click, fs.get(false.incident), permitted=True).records:
        fs.apply(key, value)
    assert fs.precision() == {"target": 0.75}
    assert fs.counts() == {("target", "false_alarm"): 1}
    assert fs.get(false.incident).quiet and not fs.get(REF.incident).quiet


def test_a_silence_click_silences_the_group_for_24_hours_under_an_id_taken_from_the_click() -> None:
    click = parse_click(payload("silence"))
    d1 = decide(click, FeedbackSet().get(REF.incident), permitted=True)
    d2 = decide(click, FeedbackSet().get(REF.incident), permitted=True)
    (s,) = d1.silences
    assert d2.silences == d1.silences
    assert (s.matchers, s.starts_at, s.ends_at - s.starts_at, s.created_by) == (
        {"campaign": "spring-sale"}, click.at, SILENCE_MS, "slack:U0ANNA")
    assert s.matches({"campaign": "spring-sale"}, "cpc", click.at + 1) and not s.matches({"campaign": "sale"}, "ctr", click.at + 1)
    # A campaign named like a pattern is silenced literally.
    odd = Ref("x#1", "x", {"campaign": "sale*[1]"}, ("ctr",), ("target",))
    (s,) = decide(parse_click(payload("silence", value=odd.to_value())), FeedbackSet().get("x#1"), permitted=True).silences
    assert s.matches({"campaign": "sale*[1]"}, "ctr", click.at) and not s.matches({"campaign": "sale-x[1]"}, "ctr", click.at)


def test_a_user_outside_the_allowed_lists_changes_nothing() -> None:
    assert allowed("U1", [], [], restricted=False)
    assert allowed("U1", ["U1"], [], restricted=True) and allowed("U2", ["U1"], ["U2"], restricted=True)
    assert not allowed("U3", ["U1"], ["U2"], restricted=True)
    d = decide(parse_click(payload()), FeedbackSet().get(REF.incident), permitted=False, who="Only users U1 may.")
    assert (d.records, d.silences, d.feedback) == ([], [], None)
    assert d.refusal == "Sorry, you are not allowed to act on kpimon alerts, so nothing was changed. Only users U1 may."


def test_bad_records_on_the_topic_are_named_and_ignored() -> None:
    fs = FeedbackSet()
    assert fs.apply(b"click|x", b"{not json").startswith("invalid_record")
    assert fs.apply(b"click|x", orjson.dumps({"incident": "x"})) == "invalid_record: KeyError"
    assert fs.apply(b"vote|x", orjson.dumps({"incident": "x", "thread": "t"})) == "unknown_record: 'vote'"
    assert fs.apply(None, b"{}") == "missing_key: feedback records are keyed"
    assert len(fs) == 0 and fs.counts() == {}


def test_a_total_has_no_silence_button_since_a_kpi_matcher_alone_would_mute_every_group() -> None:
    total = Ref("1m|total#1", "1m|total", {}, ("ctr",), ("target",))
    with pytest.raises(InvalidClick, match="no Silence button"):
        parse_click(payload("silence", value=total.to_value()))
    assert parse_click(payload("ack", value=total.to_value())).ref == total
