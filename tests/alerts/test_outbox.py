"""The outbox stages (alerts/outbox.py), with the real slack-sdk client against the local Slack API:
dedup → silence → mark in doubt → send (one retry policy) → record."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from pydantic import SecretStr
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator

from alerts import DeliveryState, SlackThreadDelivery
from alerts.outbox import DELIVERED, DUPLICATE, FAILED, RETRIED, SILENCED, Outbox, RetryPolicy, silenced
from kpi_core.incidents import AlertEvent
from tests.support.incidents import thread_events
from tests.support.slack_api import SlackAPIServer

CHANNEL = "#kpi-alerts"


class Journal:
    """The delivery table and everything the outbox did, in order."""

    def __init__(self) -> None:
        self.table: dict[str, bytes] = {}
        self.steps: list[Any] = []
        self.outcomes: list[str] = []
        self.slept: list[float] = []

    async def durable(self) -> None:
        self.steps.append(("durable", dict(self.table)))

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        await asyncio.sleep(0)

    def state(self, thread: str) -> DeliveryState:
        return DeliveryState.from_json(orjson.loads(self.table[thread]))


class Mutes:
    def __init__(self, *kpis: str) -> None:
        self.kpis = set(kpis)

    def is_silenced(self, group: dict[str, str], kpi: str, at_ms: int) -> bool:
        return kpi in self.kpis


def outbox(slack_api: SlackAPIServer, j: Journal, *, token: str | None = None, silences: Any = None) -> Outbox:
    bot = SlackThreadDelivery(token=SecretStr(token or slack_api.token), default_channel=CHANNEL, api_url=slack_api.base_url,
                              max_retries=0, retry_interval=FixedValueRetryIntervalCalculator(0.01))
    return Outbox(bot, j.table, j.durable, silences=silences, retry=RetryPolicy(first=0.5, factor=3, cap=2),
                  count=j.outcomes.append, sleep=j.sleep)


def run(box: Outbox, events: list[AlertEvent]) -> list[str]:
    async def go() -> list[str]:
        return [await box.handle(e) for e in events]
    return asyncio.run(go())


def test_a_thread_goes_out_once_and_a_repeat_is_a_duplicate(slack_api: SlackAPIServer) -> None:
    j = Journal()
    events = thread_events()
    assert run(outbox(slack_api, j), events + events[1:2]) == [DELIVERED] * 3 + [DUPLICATE]
    [message] = slack_api.channel_messages(CHANNEL)
    assert len(message.replies) == 2
    thread = events[0].thread
    assert j.state(thread).delivered_seq == 3 and j.state(thread).pending_id is None
    # Before each send the event was stored pending and made durable.
    assert [orjson.loads(t[thread])["pending_id"] for _, t in j.steps] == [e.id for e in events]
    assert j.outcomes == [DELIVERED] * 3 + [DUPLICATE]


def test_a_muted_alert_is_recorded_not_sent_but_its_resolve_goes_out(slack_api: SlackAPIServer) -> None:
    j = Journal()
    opened, updated, resolved = thread_events()
    kpis = {f.kpi for e in (opened, updated) for f in e.findings}
    box = outbox(slack_api, j, silences=Mutes(*kpis))
    assert run(box, [opened, updated]) == [SILENCED, SILENCED]
    assert slack_api.messages == [] and j.steps == []  # nothing marked in doubt: nothing was to be sent
    assert j.state(opened.thread).delivered_seq == 2
    assert silenced(resolved, Mutes(*kpis), 0) is False
    assert run(box, [resolved]) == [DELIVERED]
    assert slack_api.messages == []  # a resolve of a thread never shown sends nothing
    assert j.state(opened.thread).delivered_seq == 3


def test_partly_muted_alerts_go_out() -> None:
    opened, updated, _ = thread_events()
    assert len({f.kpi for f in updated.findings}) == 2
    assert silenced(updated, Mutes(updated.findings[0].kpi), 0) is False
    assert silenced(opened, Mutes(opened.findings[0].kpi), 0) is True
    assert silenced(opened, None, 0) is False


def test_slack_down_is_retried_with_the_policy_until_it_is_back(slack_api: SlackAPIServer) -> None:
    j = Journal()
    slack_api.fail_next(4, status=429, retry_after=0)  # rate limited: Slack did nothing, not in doubt
    opened = thread_events()[0]
    assert run(outbox(slack_api, j), [opened]) == [DELIVERED]
    assert j.outcomes == [RETRIED] * 4 + [DELIVERED]
    assert j.slept == [0.5, 1.5, 2, 2]  # first, ×3, capped at 2
    assert len(slack_api.channel_messages(CHANNEL)) == 1
    assert j.state(opened.thread).delivered_seq == 1


def test_a_permanent_failure_is_given_up_and_recorded(slack_api: SlackAPIServer) -> None:
    j = Journal()
    opened = thread_events()[0]
    assert run(outbox(slack_api, j, token="xoxb-wrong"), [opened]) == [FAILED]
    assert j.slept == [] and slack_api.messages == []
    assert j.state(opened.thread).delivered_seq == 1  # not retried forever: the next change goes out
