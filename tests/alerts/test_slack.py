"""The Slack notifiers, with the real slack-sdk clients against a local Slack API."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from pydantic import SecretStr
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator

from alerts import AlertDeliveryError, render
from alerts.slack import SlackBotNotifier, SlackWebhookNotifier
from tests.support.breaches import CTR_BREACH
from tests.support.slack_api import SlackAPIServer

FAST = FixedValueRetryIntervalCalculator(0.01)  # backoff between 5xx retries, kept short for tests


def bot(slack_api: SlackAPIServer, *, token: str | None = None, max_retries: int = 5) -> SlackBotNotifier:
    return SlackBotNotifier(
        token=SecretStr(token or slack_api.token),
        channel="#kpi-alerts",
        api_url=slack_api.base_url,
        max_retries=max_retries,
        retry_interval=FAST,
    )


def webhook(slack_api: SlackAPIServer, *, max_retries: int = 5) -> SlackWebhookNotifier:
    return SlackWebhookNotifier(url=SecretStr(slack_api.webhook_url), max_retries=max_retries, retry_interval=FAST)


def test_bot_posts_one_message_with_the_bearer_token(slack_api: SlackAPIServer) -> None:
    asyncio.run(bot(slack_api).send([CTR_BREACH]))

    text, blocks = render([CTR_BREACH])
    [request] = slack_api.requests
    assert request.path == "/api/chat.postMessage"
    assert request.headers["Authorization"] == f"Bearer {slack_api.token}"
    assert request.body == {"channel": "#kpi-alerts", "text": text, "blocks": blocks}
    assert slack_api.failures == []


def test_bot_waits_for_retry_after_on_429(slack_api: SlackAPIServer) -> None:
    slack_api.fail_next(1, status=429, retry_after=1)

    asyncio.run(bot(slack_api).send([CTR_BREACH]))

    [failed], [accepted] = slack_api.failures, slack_api.requests
    assert failed.status == 429
    assert len(slack_api.messages) == 1
    assert accepted.at - failed.at >= 1.0


def test_bot_retries_server_errors(slack_api: SlackAPIServer) -> None:
    slack_api.fail_next(2, status=503)

    asyncio.run(bot(slack_api).send([CTR_BREACH]))

    assert [f.status for f in slack_api.failures] == [503, 503]
    assert len(slack_api.messages) == 1


def test_bot_gives_up_after_max_retries_without_leaking_the_token(
    slack_api: SlackAPIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    slack_api.outage(60, statuses=[503, 502])

    with pytest.raises(AlertDeliveryError) as caught:
        asyncio.run(bot(slack_api, max_retries=2).send([CTR_BREACH]))

    assert str(caught.value) == "Slack chat.postMessage failed: HTTP 503, error service_unavailable"
    assert len(slack_api.failures) == 3  # the first attempt and two retries
    assert slack_api.token not in caplog.text


def test_bad_token_is_not_retried_and_not_repeated(slack_api: SlackAPIServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "xoxb-9999-wrong-token"

    with pytest.raises(AlertDeliveryError) as caught:
        asyncio.run(bot(slack_api, token=wrong).send([CTR_BREACH]))

    assert str(caught.value) == "Slack chat.postMessage failed: HTTP 200, error invalid_auth"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # slack-sdk's message names the URL
    assert [f.error for f in slack_api.failures] == ["invalid_auth"]
    assert wrong not in caplog.text


def test_unreachable_slack_is_a_delivery_error() -> None:
    with SlackAPIServer() as stopped:
        pass  # its port now refuses connections

    notifier = bot(stopped, max_retries=1)

    with pytest.raises(AlertDeliveryError, match="Slack chat.postMessage failed: ClientConnectorError"):
        asyncio.run(notifier.send([CTR_BREACH]))


def test_webhook_posts_to_its_url(slack_api: SlackAPIServer) -> None:
    asyncio.run(webhook(slack_api).send([CTR_BREACH]))

    text, blocks = render([CTR_BREACH])
    [request] = slack_api.requests
    assert slack_api.webhook_url.endswith(request.path)
    assert slack_api.webhook_messages == [{"text": text, "blocks": blocks}]


def test_webhook_retries_429_and_5xx_without_logging_its_url(
    slack_api: SlackAPIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    slack_api.fail_next(1, status=429, retry_after=0)
    slack_api.fail_next(2, status=503)

    started = time.monotonic()
    asyncio.run(webhook(slack_api).send([CTR_BREACH]))

    assert [f.status for f in slack_api.failures] == [429, 503, 503]
    assert len(slack_api.webhook_messages) == 1
    assert time.monotonic() - started < 5
    assert "webhook-secret" not in caplog.text


def test_webhook_failure_names_status_not_url(slack_api: SlackAPIServer) -> None:
    slack_api.outage(60, statuses=[503])

    with pytest.raises(AlertDeliveryError) as caught:
        asyncio.run(webhook(slack_api, max_retries=1).send([CTR_BREACH]))

    assert str(caught.value) == "Slack incoming webhook failed: HTTP 503, error service_unavailable"
    assert len(slack_api.failures) == 2


def test_nothing_to_send_sends_nothing(slack_api: SlackAPIServer) -> None:
    asyncio.run(bot(slack_api).send([]))
    asyncio.run(webhook(slack_api).send([]))

    assert slack_api.requests == [] and slack_api.failures == []
