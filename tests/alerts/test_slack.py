"""The shared Slack plumbing (retry handlers, webhook poster, error classification), through the live deliveries."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from pydantic import SecretStr
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator

from alerts import AlertDeliveryError, SlackThreadDelivery, WebhookDelivery
from tests.support.incidents import OPENED
from tests.support.slack_api import SlackAPIServer

FAST = FixedValueRetryIntervalCalculator(0.01)  # backoff between 5xx retries, kept short for tests


def bot(slack_api: SlackAPIServer) -> SlackThreadDelivery:
    return SlackThreadDelivery(
        token=SecretStr(slack_api.token), default_channel="#kpi-alerts", api_url=slack_api.base_url, retry_interval=FAST
    )


def webhook(slack_api: SlackAPIServer, *, max_retries: int = 5) -> WebhookDelivery:
    return WebhookDelivery(url=SecretStr(slack_api.webhook_url), max_retries=max_retries, retry_interval=FAST)


def test_bot_waits_for_retry_after_on_429(slack_api: SlackAPIServer) -> None:
    slack_api.fail_next(1, status=429, retry_after=1)

    asyncio.run(bot(slack_api).deliver(OPENED, None))

    [failed], [accepted] = slack_api.failures, slack_api.requests
    assert failed.status == 429
    assert len(slack_api.messages) == 1
    assert accepted.at - failed.at >= 1.0


def test_webhook_retries_429_and_5xx_without_logging_its_url(
    slack_api: SlackAPIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    slack_api.fail_next(1, status=429, retry_after=0)
    slack_api.fail_next(2, status=503)

    started = time.monotonic()
    asyncio.run(webhook(slack_api).deliver(OPENED, None))

    assert [f.status for f in slack_api.failures] == [429, 503, 503]
    assert len(slack_api.webhook_messages) == 1
    assert time.monotonic() - started < 5
    assert "webhook-secret" not in caplog.text


def test_webhook_failure_names_status_not_url(slack_api: SlackAPIServer) -> None:
    slack_api.outage(60, statuses=[503])

    with pytest.raises(AlertDeliveryError) as caught:
        asyncio.run(webhook(slack_api, max_retries=1).deliver(OPENED, None))

    assert str(caught.value) == "Slack incoming webhook failed: HTTP 503, error service_unavailable"
    assert caught.value.retryable
    assert len(slack_api.failures) == 2
