"""Slack plumbing shared by the deliveries: the Web API client (bot token), the incoming
webhook poster, and how their failures become ``AlertDeliveryError``s.

Both retry with slack-sdk's async retry handlers (never the sync ones, which
``time.sleep`` and would stall the worker's event loop). Errors and log lines never
carry the token or the webhook URL.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import aiohttp
from aiohttp import ClientConnectorError
from pydantic import SecretStr
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
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

DEFAULT_MAX_RETRIES = 5

# slack-sdk logs request URLs (a webhook URL is a secret) whenever its logger's own level
# is DEBUG or unset, even at INFO for retries; a logger pinned at INFO turns that off.
_sdk_log = logging.getLogger("kpimon.alerts.slack_sdk")
_sdk_log.setLevel(logging.INFO)

_ERROR_CODE = re.compile(r"[a-z0-9_.]{1,64}")  # the shape of Slack's error codes; nothing else is echoed
_RETRYABLE_5XX = frozenset({500, 502, 503, 504})
# Slack's codes for its own trouble, sometimes sent with HTTP 200: worth trying again later.
_RETRYABLE_CODES = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"})


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


class WebhookPoster:
    """Posts one message to an incoming webhook, retrying 429, 5xx and connection errors."""

    def __init__(
        self,
        *,
        url: SecretStr,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_interval: RetryIntervalCalculator | None = None,
    ) -> None:
        interval = retry_interval or BackoffRetryIntervalCalculator()
        self._client = AsyncWebhookClient(
            url=url.get_secret_value(),
            logger=_sdk_log,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=max_retries, interval_calculator=interval),
                AsyncRateLimitErrorRetryHandler(max_retry_count=max_retries),  # waits for Retry-After
            ],
        )
        self._server_errors = _ServerErrorRetryHandler(max_retry_count=max_retries, interval_calculator=interval)

    async def post(self, *, text: str, blocks: list[dict[str, Any]]) -> None:
        """Post, or raise ``AlertDeliveryError`` (``retryable`` for 429, 5xx and connection errors)."""
        try:
            response = await self._post(text=text, blocks=blocks)
        except Exception as err:
            # aiohttp's messages may embed the webhook URL, so only the type is kept.
            raise AlertDeliveryError(
                f"Slack incoming webhook failed: {type(err).__name__}", retryable=_is_connection_error(err)
            ) from None
        if response.status_code != 200:
            raise AlertDeliveryError(
                f"Slack incoming webhook failed: {_failure(response.status_code, response.body)}",
                retryable=_retryable_status(response.status_code),
            )

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


def web_client(
    *,
    token: SecretStr,
    api_url: str,
    max_retries: int,
    retry_interval: RetryIntervalCalculator | None = None,
    retry_server_errors: bool = True,
) -> AsyncWebClient:
    """slack-sdk's Web API client with async retry handlers: connection errors, 429 (after Retry-After), 5xx.

    ``retry_server_errors=False`` is for calls that must not be repeated blindly, such as
    posting a message: a 5xx or a dropped connection may come after Slack posted it.
    Connections that never opened and 429s are still retried, as Slack did nothing.
    """
    interval = retry_interval or BackoffRetryIntervalCalculator()
    if retry_server_errors:
        connection = AsyncConnectionErrorRetryHandler(max_retry_count=max_retries, interval_calculator=interval)
    else:
        connection = AsyncConnectionErrorRetryHandler(
            max_retry_count=max_retries, interval_calculator=interval, error_types=[ClientConnectorError]
        )
    handlers: list[AsyncRetryHandler] = [
        connection,
        AsyncRateLimitErrorRetryHandler(max_retry_count=max_retries),  # waits for Retry-After
    ]
    if retry_server_errors:
        handlers.append(_ServerErrorRetryHandler(max_retry_count=max_retries, interval_calculator=interval))
    return AsyncWebClient(
        token=token.get_secret_value(),
        base_url=api_url if api_url.endswith("/") else api_url + "/",
        logger=_sdk_log,
        retry_handlers=handlers,
    )


def delivery_error(method: str, err: BaseException) -> AlertDeliveryError:
    """A Web API call's failure as an ``AlertDeliveryError``: status and Slack's code only, and whether to retry."""
    if isinstance(err, SlackApiError):
        data = err.response.data
        code = data.get("error") if isinstance(data, dict) else None
        status = err.response.status_code
        retryable = _retryable_status(status) or code in _RETRYABLE_CODES
        return AlertDeliveryError(f"Slack {method} failed: {_failure(status, code)}", retryable=retryable)
    # aiohttp's and slack-sdk's messages may embed URLs, so only the type is kept.
    return AlertDeliveryError(f"Slack {method} failed: {type(err).__name__}", retryable=_is_connection_error(err))


def _retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def _is_connection_error(err: BaseException) -> bool:
    """Network trouble (worth retrying later), as opposed to a bug or a refusal."""
    return isinstance(err, (aiohttp.ClientError, asyncio.TimeoutError, OSError))


def _failure(status: int, code: str | None) -> str:
    """HTTP status and Slack error code, e.g. ``HTTP 200, error invalid_auth``."""
    if code and _ERROR_CODE.fullmatch(code):
        return f"HTTP {status}, error {code}"
    return f"HTTP {status}"
