"""Exactly-once thread delivery, with the real slack-sdk clients against a local Slack API."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Iterable

import pytest
from pydantic import SecretStr
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator

from alerts import (
    AlertDeliveryError,
    ConsoleDelivery,
    Delivery,
    DeliveryState,
    SlackThreadDelivery,
    WebhookDelivery,
    build_delivery,
    from_env,
    render_event,
    render_update,
)
from kpi_core.incidents import AlertEvent
from tests.support.incidents import CPC_FINDING, OPENED, make_event, thread_events
from tests.support.slack_api import SlackAPIServer

FAST = FixedValueRetryIntervalCalculator(0.01)  # backoff between retries, kept short for tests
CHANNEL = "#kpi-alerts"


def bot(slack_api: SlackAPIServer, *, token: str | None = None, max_retries: int = 5) -> SlackThreadDelivery:
    return SlackThreadDelivery(
        token=SecretStr(token or slack_api.token),
        default_channel=CHANNEL,
        api_url=slack_api.base_url,
        max_retries=max_retries,
        retry_interval=FAST,
    )


def webhook(slack_api: SlackAPIServer) -> WebhookDelivery:
    return WebhookDelivery(url=SecretStr(slack_api.webhook_url), retry_interval=FAST)


def deliver_all(delivery: Delivery, events: Iterable[AlertEvent], state: DeliveryState | None = None) -> DeliveryState:
    """What the worker does per event: store ``begin``'s state, deliver, store the result."""

    async def run(state: DeliveryState | None) -> DeliveryState:
        for event in events:
            state = delivery.begin(event, state)
            state = await delivery.deliver(event, state)
        assert state is not None
        return state

    return asyncio.run(run(state))


async def deliver_until_done(delivery: Delivery, event: AlertEvent, state: DeliveryState) -> tuple[DeliveryState, int]:
    """The worker's loop: retry retryable failures after a pause; also return how many there were."""
    errors = 0
    while True:
        try:
            return await delivery.deliver(event, state), errors
        except AlertDeliveryError as err:
            assert err.retryable, err
            errors += 1
            await asyncio.sleep(0.1)


def paths(slack_api: SlackAPIServer) -> list[str]:
    return [r.path.removeprefix("/api/") for r in slack_api.requests]


# -- the thread's life ---------------------------------------------------------


def test_opening_posts_one_message_carrying_the_event_id(slack_api: SlackAPIServer) -> None:
    state = deliver_all(bot(slack_api), [OPENED])

    [message] = slack_api.channel_messages(CHANNEL)
    text, blocks = render_event(OPENED)
    assert (message.text, message.blocks) == (text, blocks)
    assert message.metadata == {
        "event_type": "kpimon_alert",
        "event_payload": {"id": "1m|campaign|spring-sale#1", "thread": "1m|campaign|spring-sale"},
    }
    assert state == DeliveryState(
        channel=slack_api.channel_id(CHANNEL), root_ts=message.ts, delivered_seq=1, severity="critical", firing=("ctr",),
        incident="1m|campaign|spring-sale#1",
    )
    assert paths(slack_api) == ["chat.postMessage"]  # nothing was in doubt, so nothing was looked up


def test_update_edits_the_message_and_replies_in_its_thread(slack_api: SlackAPIServer) -> None:
    opened, updated, _ = thread_events()

    state = deliver_all(bot(slack_api), [opened, updated])

    [message] = slack_api.channel_messages(CHANNEL)
    assert [(e["text"], e["blocks"]) for e in message.edits] == [render_event(updated)]
    [reply] = message.replies
    assert reply.text == "New: cpc 0.75 above target 0.50"
    assert reply.metadata is not None and reply.metadata["event_payload"]["id"] == "1m|campaign|spring-sale#2"
    assert slack_api.thread(CHANNEL, message.ts) == [message, reply]
    assert (state.root_ts, state.delivered_seq, state.firing) == (message.ts, 2, ("ctr", "cpc"))


def test_resolve_edits_the_message_to_resolved_and_replies(slack_api: SlackAPIServer) -> None:
    state = deliver_all(bot(slack_api), thread_events())

    [message] = slack_api.channel_messages(CHANNEL)
    assert message.text == render_event(thread_events()[2])[0]
    assert message.blocks is not None and message.blocks[0]["text"]["text"].startswith("✅ RESOLVED · campaign=spring-sale")
    assert len(message.edits) == 2
    assert [r.text for r in message.replies] == [
        "New: cpc 0.75 above target 0.50",
        "Resolved: ctr back to 3.10% (target 2.00%, baseline 4.10%); cpc back to 0.45 (target 0.50)",
    ]
    assert (state.delivered_seq, state.pending_id, state.firing) == (3, None, ())


def test_escalation_and_reminder_replies(slack_api: SlackAPIServer) -> None:
    warning = make_event(severity="warning", findings=[CPC_FINDING])
    escalated = make_event(seq=2, kind="updated", findings=[CPC_FINDING, OPENED.findings[0]])
    reminder = make_event(seq=3, kind="reminder", findings=escalated.findings)

    deliver_all(bot(slack_api), [warning, escalated, reminder])

    [message] = slack_api.channel_messages(CHANNEL)
    assert [r.text for r in message.replies] == [
        "Escalated to critical: ctr 0.42% below target 2.00%\nNew: ctr 0.42% below target 2.00%",
        "Still firing: cpc 0.75 above target 0.50; ctr 0.42% below target 2.00%",
    ]
    assert len(message.edits) == 1  # a reminder replies but leaves the message as it is


def test_a_routed_channel_and_a_reopened_thread_get_new_messages(slack_api: SlackAPIServer) -> None:
    routed = make_event(channel="C0GROWTH")
    reopened = make_event(seq=4, kind="opened", channel="C0GROWTH")

    state = deliver_all(bot(slack_api), [routed, *thread_events()[1:], reopened])

    first, second = slack_api.channel_messages("C0GROWTH")
    assert (len(first.replies), second.replies) == (2, [])
    assert (state.channel, state.root_ts) == ("C0GROWTH", second.ts)
    assert slack_api.channel_messages(CHANNEL) == []


def test_a_deleted_message_is_posted_anew(slack_api: SlackAPIServer) -> None:
    # The thread's message is gone (someone deleted it): its state is posted as a new message.
    gone = DeliveryState(channel=slack_api.channel_id(CHANNEL), root_ts="1699999999.000001", delivered_seq=1)
    updated = thread_events()[1]

    state = deliver_all(bot(slack_api), [updated], gone)

    [message] = slack_api.channel_messages(CHANNEL)
    assert (message.text, message.replies) == (render_event(updated)[0], [])
    assert state.root_ts == message.ts


# -- exactly once ----------------------------------------------------------------


def test_a_delivered_event_is_not_sent_again(slack_api: SlackAPIServer) -> None:
    delivery = bot(slack_api)
    state = deliver_all(delivery, thread_events()[:2])
    sent = len(slack_api.requests)

    for event in thread_events()[:2]:  # the outbox replays them after a restart
        assert delivery.begin(event, state) == state
        assert asyncio.run(delivery.deliver(event, state)) == state

    assert len(slack_api.requests) == sent


def test_opening_in_doubt_after_a_crash_is_not_posted_twice(slack_api: SlackAPIServer) -> None:
    delivery = bot(slack_api)
    pending = delivery.begin(OPENED, None)  # stored before calling Slack
    asyncio.run(delivery.deliver(OPENED, pending))  # posted, then the process died before storing the result

    # Started again with the stored state, once in the same process and once in a new one.
    again = asyncio.run(delivery.deliver(OPENED, pending))
    restarted = bot(slack_api)
    after_restart = asyncio.run(restarted.deliver(OPENED, restarted.begin(OPENED, pending)))

    [message] = slack_api.channel_messages(CHANNEL)
    assert again.root_ts == after_restart.root_ts == message.ts
    assert after_restart.delivered_seq == 1 and after_restart.pending_id is None
    assert paths(slack_api).count("chat.postMessage") == 1
    assert "conversations.history" in paths(slack_api)


def test_reply_in_doubt_after_a_crash_is_not_posted_twice(slack_api: SlackAPIServer) -> None:
    opened, updated, _ = thread_events()
    state = deliver_all(bot(slack_api), [opened])
    delivery = bot(slack_api)
    pending = delivery.begin(updated, state)
    asyncio.run(delivery.deliver(updated, pending))  # edited and replied; the result was never stored

    restarted = bot(slack_api)
    state = asyncio.run(restarted.deliver(updated, restarted.begin(updated, pending)))

    [message] = slack_api.channel_messages(CHANNEL)
    assert [r.text for r in message.replies] == ["New: cpc 0.75 above target 0.50"]
    assert len(message.edits) == 2  # the edit is idempotent, so it is simply made again
    assert "conversations.replies" in paths(slack_api)
    assert state.delivered_seq == 2


def test_a_post_failing_with_5xx_is_looked_up_before_it_is_retried(slack_api: SlackAPIServer) -> None:
    # A 5xx may come after Slack posted: look (here the look-up itself needs a retry), then post.
    slack_api.channel_id(CHANNEL)  # the channel exists, as it does in Slack before the first alert
    slack_api.fail_next(3, status=503)

    state = deliver_all(bot(slack_api), [OPENED])

    failed = [(f.path.removeprefix("/api/"), f.status) for f in slack_api.failures]
    assert failed == [("chat.postMessage", 503), ("conversations.list", 503), ("conversations.list", 503)]
    assert paths(slack_api) == ["conversations.list", "conversations.history", "chat.postMessage"]
    assert len(slack_api.channel_messages(CHANNEL)) == 1 and state.delivered_seq == 1


def test_outage_of_3_seconds_loses_nothing_and_posts_once(slack_api: SlackAPIServer) -> None:
    slack_api.channel_id(CHANNEL)
    delivery = bot(slack_api, max_retries=2)
    slack_api.outage(3.0, statuses=[503, 429])
    outage_ends = time.monotonic() + 3.0

    async def worker() -> tuple[DeliveryState | None, int]:
        state, errors = None, 0
        for event in thread_events():
            state, failed = await deliver_until_done(delivery, event, delivery.begin(event, state))
            errors += failed
        return state, errors

    started = time.monotonic()
    state, errors = asyncio.run(worker())

    [message] = slack_api.channel_messages(CHANNEL)
    assert [r.text.split(":")[0] for r in message.replies] == ["New", "Resolved"]
    assert message.text == render_event(thread_events()[2])[0]
    assert state is not None and state.delivered_seq == 3
    failures = slack_api.failures
    # Every request in the outage failed, 503 and 429 in turn, and every one after it succeeded.
    assert [f.status for f in failures] == [503, 429] * (len(failures) // 2) + [503] * (len(failures) % 2)
    assert all(f.at < outage_ends for f in failures)
    assert all(r.at >= outage_ends - 0.05 for r in slack_api.requests)
    # The opening's post failed once (a 5xx: in doubt), then look-ups, each call giving up
    # after max_retries + 1 attempts, until the outage ended; 429s waited their Retry-After.
    assert failures[0].path == "/api/chat.postMessage"
    assert {f.path for f in failures[1:]} <= {"/api/conversations.list", "/api/conversations.history"}
    assert errors >= 1 and len(failures) >= 1 + 3 * (errors - 1)
    assert paths(slack_api).count("chat.postMessage") == 3  # the opening and two replies, once each
    assert time.monotonic() - started < 10


def test_retryable_failure_after_retries_says_so_without_the_token(slack_api: SlackAPIServer) -> None:
    slack_api.outage(60, statuses=[503])

    with pytest.raises(AlertDeliveryError) as caught:
        asyncio.run(bot(slack_api, max_retries=1).deliver(OPENED, None))

    # After the 5xx the post is in doubt, so the next step is the look-up, which fails in turn.
    assert caught.value.retryable
    assert str(caught.value) == "Slack conversations.list failed: HTTP 503, error service_unavailable"
    assert slack_api.token not in str(caught.value)
    assert [f.path.removeprefix("/api/") for f in slack_api.failures] == ["chat.postMessage", *["conversations.list"] * 2]


def test_rate_limited_post_is_retryable_and_not_in_doubt(slack_api: SlackAPIServer) -> None:
    slack_api.fail_next(2, status=429, retry_after=0)

    with pytest.raises(AlertDeliveryError) as caught:
        asyncio.run(bot(slack_api, max_retries=1).deliver(OPENED, None))

    # A 429 means Slack did nothing: slack-sdk retried it once, and no look-up was needed.
    assert caught.value.retryable
    assert str(caught.value) == "Slack chat.postMessage failed: HTTP 429, error ratelimited"
    assert [f.path for f in slack_api.failures] == ["/api/chat.postMessage"] * 2


def test_permanent_failure_is_not_retryable(slack_api: SlackAPIServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "xoxb-9999-wrong-token"

    with pytest.raises(AlertDeliveryError) as caught:
        asyncio.run(bot(slack_api, token=wrong).deliver(OPENED, None))

    assert not caught.value.retryable
    assert str(caught.value) == "Slack chat.postMessage failed: HTTP 200, error invalid_auth"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert [f.error for f in slack_api.failures] == ["invalid_auth"]
    assert wrong not in caplog.text


def test_unreachable_slack_is_retryable() -> None:
    with SlackAPIServer() as stopped:
        pass  # its port now refuses connections

    with pytest.raises(AlertDeliveryError, match="ClientConnectorError") as caught:
        asyncio.run(bot(stopped, max_retries=1).deliver(OPENED, None))

    assert caught.value.retryable


def test_skip_marks_delivered_without_sending(slack_api: SlackAPIServer) -> None:
    delivery = bot(slack_api)
    silenced = delivery.skip(OPENED, delivery.begin(OPENED, None))

    state = deliver_all(delivery, thread_events()[1:2], silenced)

    # The opening was never shown, so the update is the thread's first message.
    [message] = slack_api.channel_messages(CHANNEL)
    assert (message.text, message.replies) == (render_event(thread_events()[1])[0], [])
    assert (silenced.delivered_seq, silenced.pending_id, state.delivered_seq) == (1, None, 2)


@pytest.mark.parametrize("make", [bot, webhook, lambda _: ConsoleDelivery(io.StringIO())])
def test_resolving_a_thread_never_shown_sends_nothing(slack_api: SlackAPIServer, make) -> None:  # type: ignore[no-untyped-def]
    delivery = make(slack_api)
    opened, updated, resolved = thread_events()
    silenced = delivery.skip(opened, delivery.begin(opened, None))

    state = deliver_all(delivery, [resolved], silenced)

    assert slack_api.requests == [] and slack_api.failures == []
    assert (state.delivered_seq, state.pending_id) == (3, None)


def test_token_never_in_logs(slack_api: SlackAPIServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    slack_api.fail_next(1, status=503)
    slack_api.fail_next(1, status=429, retry_after=0)
    delivery = bot(slack_api)
    pending = delivery.begin(OPENED, None)
    asyncio.run(delivery.deliver(OPENED, pending))

    deliver_all(bot(slack_api), thread_events(), pending)  # in doubt, then the whole thread

    assert caplog.text  # something was logged, just not the token
    assert slack_api.token not in caplog.text


def test_state_round_trips_through_json() -> None:
    state = DeliveryState(channel="C1", root_ts="1.000100", delivered_seq=3, pending_id="t#4", severity="critical",
                          firing=("ctr", "cpc"))

    assert DeliveryState.from_json(state.to_json()) == state
    assert DeliveryState.from_json({"delivered_seq": 2}) == DeliveryState(delivered_seq=2)


# -- webhook and console ---------------------------------------------------------


def test_webhook_posts_every_change_as_a_new_message(slack_api: SlackAPIServer) -> None:
    opened, updated, resolved = thread_events()
    delivery = webhook(slack_api)

    state = deliver_all(delivery, [opened, updated, resolved])
    deliver_all(delivery, [updated], state)  # delivered already: skipped

    headers = [m["blocks"][0]["text"]["text"] for m in slack_api.webhook_messages]
    assert headers == [
        "🔴 CRITICAL · campaign=spring-sale · 1 KPI breaching",
        "UPDATE · 🔴 CRITICAL · campaign=spring-sale · 2 KPIs breaching",
        "✅ RESOLVED · campaign=spring-sale · 2 KPIs back to normal",
    ]
    assert slack_api.webhook_messages[1]["blocks"][1]["text"]["text"] == "New: cpc 0.75 above target 0.50"
    assert state.delivered_seq == 3


def test_console_writes_a_banner_and_the_text(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    state = deliver_all(ConsoleDelivery(stream), [OPENED])
    deliver_all(ConsoleDelivery(), [OPENED], state)  # delivered already: nothing written

    assert stream.getvalue() == f"\n=== ALERT opened {OPENED.id} ===\n{render_event(OPENED)[0]}\n"
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_CHANNEL": "#kpi-alerts", "SLACK_WEBHOOK_URL": "https://h.example/x"},
         SlackThreadDelivery),  # the bot wins when both are set
        ({"SLACK_WEBHOOK_URL": "https://hooks.example/T/B/secret"}, WebhookDelivery),
        ({}, ConsoleDelivery),  # nothing configured: the demo still shows alerts
    ],
)
def test_build_delivery_picks_by_settings(env: dict[str, str], kind: type) -> None:
    assert isinstance(build_delivery(from_env(env)), kind)


def test_default_channel_from_the_config_wins(slack_api: SlackAPIServer) -> None:
    settings = from_env({"SLACK_BOT_TOKEN": slack_api.token, "SLACK_CHANNEL": "#kpi-alerts", "SLACK_API_URL": slack_api.base_url})

    deliver_all(build_delivery(settings, default_channel="#growth-alerts", max_retries=0), [OPENED])

    [message] = slack_api.channel_messages("#growth-alerts")
    assert message["metadata"]["event_payload"]["id"] == OPENED.id  # messages read as dicts too
    assert "xoxb" not in str(slack_api.requests_json())


def test_update_reply_without_history_says_what_is_firing() -> None:
    # A state stored before severity and firing were recorded still gets a sensible reply.
    assert render_update(thread_events()[1]) == "Still firing: ctr 0.42% below target 2.00%; cpc 0.75 above target 0.50"


def test_an_opening_not_shown_still_starts_a_new_incident() -> None:
    """A silenced reopening: its updates must not inherit the previous incident's snooze."""
    old = DeliveryState(channel="C1", root_ts="1.0", delivered_seq=3, incident="1m|campaign|spring-sale#1")
    reopened = make_event(seq=4)
    assert old.delivered(reopened, shown=False).incident == reopened.id
    assert old.delivered(make_event(seq=5, kind="updated"), shown=False).incident == old.incident
