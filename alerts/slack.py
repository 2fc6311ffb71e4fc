"""Slack notifiers: the Web API with a bot token, and incoming webhooks.

Both retry with slack-sdk's async retry handlers (never the sync ones, which
``time.sleep`` and would stall the worker's event loop). Errors and log lines never
carry the token or the webhook URL.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pydantic import SecretStr
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.interval_calculator import RetryIntervalCalculator
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient
from slack_sdk.webhook.webhook_response import WebhookResponse

from alerts.base import AlertDeliveryError
from alerts.render import render
from kpi_core.results import Breach

DEFAULT_MAX_RETRIES = 5

log = logging.getLogger("kpimon.alerts")

# slack-sdk logs request URLs (a webhook URL is a secret) whenever its logger's own level
# is DEBUG or unset, even at INFO for retries; a logger pinned at INFO turns that off.
_sdk_log = logging.getLogger("kpimon.alerts.slack_sdk")
_sdk_log.setLevel(logging.INFO)

_ERROR_CODE = re.compile(r"[a-z0-9_.]{1,64}")  # the shape of Slack's error codes; nothing else is echoed
_RETRYABLE_5XX = frozenset({500, 502, 503, 504})


class _ServerErrorRetryHandler(AsyncServerErrorRetryHandler):
    """Also retries 502 and 504 (the built-in stops at 500 and 503): proxies answer them during outages."""

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and response.status_code in _RETRYABLE_5XX


class SlackBotNotifier:
    """Posts each alert to a channel with ``chat.postMessage``."""

    def __init__(
        self,
        *,
        token: SecretStr,
        channel: str,
        api_url: str = AsyncWebClient.BASE_URL,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_interval: RetryIntervalCalculator | None = None,
        grafana_url: str | None = None,
    ) -> None:
        interval = retry_interval or BackoffRetryIntervalCalculator()
        self._channel = channel
        self._grafana_url = grafana_url
        self._client = AsyncWebClient(
            token=token.get_secret_value(),
            base_url=api_url if api_url.endswith("/") else api_url + "/",
            logger=_sdk_log,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=max_retries, interval_calculator=interval),
                AsyncRateLimitErrorRetryHandler(max_retry_count=max_retries),  # waits for Retry-After
                _ServerErrorRetryHandler(max_retry_count=max_retries, interval_calculator=interval),
            ],
        )

    async def send(self, breaches: list[Breach]) -> None:
        """Post one message about these breaches."""
        if not breaches:
            return
        text, blocks = render(breaches, grafana_url=self._grafana_url)
        try:
            response = await self._client.chat_postMessage(channel=self._channel, text=text, blocks=blocks)
        except SlackApiError as err:
            data = err.response.data
            code = data.get("error") if isinstance(data, dict) else None
            failure = _failure(err.response.status_code, code)
            raise AlertDeliveryError(f"Slack chat.postMessage failed: {failure}") from None
        except Exception as err:
            # aiohttp's and slack-sdk's messages may embed URLs, so only the type is kept.
            raise AlertDeliveryError(f"Slack chat.postMessage failed: {type(err).__name__}") from None
        log.info("Alert posted to Slack channel %s (ts %s)", self._channel, response.get("ts"))

    async def close(self) -> None:
        """Nothing to release: slack-sdk opens a session per call."""


class SlackWebhookNotifier:
    """Posts each alert to an incoming webhook."""

    def __init__(
        self,
        *,
        url: SecretStr,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_interval: RetryIntervalCalculator | None = None,
        grafana_url: str | None = None,
    ) -> None:
        interval = retry_interval or BackoffRetryIntervalCalculator()
        self._grafana_url = grafana_url
        self._client = AsyncWebhookClient(
            url=url.get_secret_value(),
            logger=_sdk_log,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=max_retries, interval_calculator=interval),
                AsyncRateLimitErrorRetryHandler(max_retry_count=max_retries),  # waits for Retry-After
            ],
        )
        self._server_errors = _ServerErrorRetryHandler(max_retry_count=max_retries, interval_calculator=interval)

    async def send(self, breaches: list[Breach]) -> None:
        """Post one message about these breaches."""
        if not breaches:
            return
        text, blocks = render(breaches, grafana_url=self._grafana_url)
        try:
            response = await self._post(text=text, blocks=blocks)
        except Exception as err:
            # aiohttp's messages may embed the webhook URL, so only the type is kept.
            raise AlertDeliveryError(f"Slack incoming webhook failed: {type(err).__name__}") from None
        if response.status_code != 200:
            raise AlertDeliveryError(f"Slack incoming webhook failed: {_failure(response.status_code, response.body)}")
        log.info("Alert posted to the Slack incoming webhook")

    async def _post(self, *, text: str, blocks: list[dict[str, Any]]) -> WebhookResponse:
        # slack-sdk's webhook client consults its retry handlers only on 429 and connection
        # errors, so 5xx answers are retried here, by the same kind of handler.
        state = RetryState()
        request = HttpRequest(method="POST", url="", headers={})  # the handler reads only the response
        while True:
            response = await self._client.send(text=text, blocks=blocks)
            answer = HttpResponse(status_code=response.status_code, headers=dict(response.headers))
            if not await self._server_errors.can_retry_async(state=state, request=request, response=answer):
                return response
            await self._server_errors.prepare_for_next_attempt_async(state=state, request=request, response=answer)

    async def close(self) -> None:
        """Nothing to release: slack-sdk opens a session per call."""


def _failure(status: int, code: str | None) -> str:
    """HTTP status and Slack error code, e.g. ``HTTP 200, error invalid_auth``."""
    if code and _ERROR_CODE.fullmatch(code):
        return f"HTTP {status}, error {code}"
    return f"HTTP {status}"
