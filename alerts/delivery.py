"""Exactly-once delivery of incident threads: Slack (bot or incoming webhook) or the console.

A thread is one message, posted when it opens and edited as it changes, with a
reply per change. A resolve of a thread never shown (its opening was silenced) sends nothing. Each ``AlertEvent`` is delivered at most once per thread state:
``deliver`` skips events at or below ``state.delivered_seq``. Exactly once across
crashes takes the caller's help: it stores ``begin``'s state (``pending_id`` set)
before ``deliver`` runs, and ``deliver``'s afterwards. An event found pending is in
doubt: the bot then looks in Slack for a message carrying the event's id in its
metadata before posting again.

Retries use slack-sdk's async handlers (never ``time.sleep``). ``chat.postMessage``
is the one call not repeated blindly: after a 5xx or a dropped connection the
message may exist, so the bot looks first. Failures that outlast the retries raise
``AlertDeliveryError`` with ``retryable`` set for 429, 5xx and network errors.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TextIO

from aiohttp import ClientConnectorError
from pydantic import SecretStr
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.interval_calculator import RetryIntervalCalculator
from slack_sdk.web.async_client import AsyncWebClient

from alerts.base import AlertDeliveryError, Delivery, DeliveryState
from alerts.charts import incident_chart
from alerts.render import render_event, render_update
from alerts.settings import SlackSettings
from alerts.slack import DEFAULT_MAX_RETRIES, WebhookPoster, delivery_error, web_client
from kpi_core.feedback import IncidentFeedback, Ref
from kpi_core.incidents import AlertEvent

__all__ = [
    "AlertDeliveryError",
    "ConsoleDelivery",
    "Delivery",
    "DeliveryState",
    "SlackThreadDelivery",
    "WebhookDelivery",
    "build_delivery",
]

log = logging.getLogger("kpimon.alerts")

EVENT_TYPE = "kpimon_alert"  # the metadata event type that marks kpimon's messages
DEFAULT_LOOKBACK = 200  # newest channel messages searched for an opening in doubt
_MAX_REPLY_PAGES = 10
DIGEST_PAGES = 10  # pages of DEFAULT_LOOKBACK messages searched for a day's digest
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]+")  # an ID; channel names are lower case


class SlackThreadDelivery:
    """One Slack message per thread (bot token): posted, edited in place, and replied to per change."""

    def __init__(
        self,
        *,
        token: SecretStr,
        default_channel: str,
        api_url: str = AsyncWebClient.BASE_URL,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_interval: RetryIntervalCalculator | None = None,
        grafana_url: str | None = None,
        lookback: int = DEFAULT_LOOKBACK,
        buttons: bool = False,
        feedback: Callable[[str | None], IncidentFeedback] | None = None,
        charts: bool = True,
    ) -> None:
        self._buttons = buttons  # Socket Mode is on: someone receives the clicks
        self._feedback = feedback  # an incident's feedback so far (the feedback topic's fold)
        self._charts = charts
        self._default_channel = default_channel
        self._grafana_url = grafana_url
        self._max_retries = max_retries
        self._interval = retry_interval or BackoffRetryIntervalCalculator()
        self._lookback = lookback
        options: dict[str, Any] = dict(token=token, api_url=api_url, max_retries=max_retries, retry_interval=retry_interval)
        self._client = web_client(**options)  # idempotent calls: every failure worth retrying is retried
        self._post_client = web_client(**options, retry_server_errors=False)
        self._clean: set[str] = set()  # events begun here and not yet sent: not in doubt
        self._channel_ids: dict[str, str] = {}  # "#name" -> ID, learned from Slack's answers

    def begin(self, event: AlertEvent, state: DeliveryState | None) -> DeliveryState:
        """The state to store before ``deliver``: the event marked pending."""
        state = state or DeliveryState()
        if state.delivered_seq >= event.seq:
            return state
        if state.pending_id != event.id:
            # Found pending already, the event is in doubt: an earlier run may have sent it.
            self._clean.add(event.id)
        return replace(state, pending_id=event.id)

    def skip(self, event: AlertEvent, state: DeliveryState | None) -> DeliveryState:
        """Mark the event delivered without sending it (silenced, or given up on)."""
        self._clean.discard(event.id)
        return (state or DeliveryState()).delivered(event, shown=False)

    async def deliver(self, event: AlertEvent, state: DeliveryState | None) -> DeliveryState:
        """Post, edit or reply for this event, once; return the state to store."""
        state = state or DeliveryState()
        if state.delivered_seq >= event.seq:
            log.debug("Alert %s already delivered; skipped", event.id)
            return replace(state, pending_id=None) if state.pending_id == event.id else state
        if _never_shown(event, state):
            return state.delivered(event, shown=False)
        in_doubt = state.pending_id == event.id and event.id not in self._clean
        incident = event.id if event.kind == "opened" else state.incident
        text, blocks = render_event(event, grafana_url=self._grafana_url, ref=Ref.of(event, incident) if self._buttons and incident else None,
                                    feedback=self._feedback(incident) if self._feedback and incident else None)
        if event.kind != "opened" and state.channel and state.root_ts:
            try:
                await self._change_thread(event, state, text, blocks, in_doubt=in_doubt)
                self._clean.discard(event.id)
                return state.delivered(event)
            except _RootGone:
                log.warning("The Slack message of thread %s is gone; posting the thread's state anew", event.thread)
        channel = event.channel or self._default_channel
        channel, ts, found = await self._post(channel, event, text=text, blocks=blocks, in_doubt=in_doubt)
        if found:
            # The message found may predate a change of rendering; editing it again is harmless.
            await self._update(channel, ts, text, blocks)
        log.info("Alert %s (%s) posted to Slack channel %s (ts %s)", event.id, event.kind, channel, ts)
        if event.kind == "opened" and self._charts:
            await self._chart(event, channel, ts, in_doubt=found)
        self._clean.discard(event.id)
        return replace(state, channel=channel, root_ts=ts).delivered(event)

    async def _chart(self, event: AlertEvent, channel: str, ts: str, *, in_doubt: bool) -> None:
        """Upload the opening's chart into its thread, once."""
        try:
            png = await asyncio.to_thread(incident_chart, event)  # matplotlib off the event loop
        except Exception:  # noqa: BLE001 - a chart must never hold up the alert it illustrates
            log.exception("Chart of alert %s could not be drawn; the alert goes without it", event.id)
            return
        kpi = event.findings[0].kpi
        if png is not None:
            await self.upload(channel, ts, event.id, png, title=f"{kpi} chart", in_doubt=in_doubt,
                              alt=f"{kpi} over the recent windows, with its target and the breaching windows marked")

    async def find_posted(self, channel: str, key: str) -> tuple[str, str] | None:
        """The channel ID and ts of a message ``post_once`` posted with ``key``, if the channel's latest
        ``DIGEST_PAGES`` pages of messages hold it (a digest is looked for all day, in a busy channel too)."""
        return await self._find(channel, key, None, pages=DIGEST_PAGES)

    async def post_once(self, channel: str, key: str, text: str, blocks: list[dict[str, Any]]) -> tuple[str, str, bool]:
        """Post a message carrying ``key`` unless the channel has one already (a digest after a
        restart): the channel ID and ts of the message, and whether it was found, not posted."""
        found = await self.find_posted(channel, key)
        if found is not None:
            return *found, True
        return await self._post(channel, _Keyed(key, key), text=text, blocks=blocks, in_doubt=False)

    async def upload(self, channel: str, ts: str, key: str, png: bytes, *, title: str, alt: str, in_doubt: bool) -> None:
        """Upload a PNG into a thread once (``files_upload_v2``). A chart that cannot be uploaded
        is logged and left out: the message it illustrates is delivered."""
        name = _chart_name(key)
        for attempt in range(self._max_retries + 1):
            if (in_doubt or attempt) and await self._has_file(channel, ts, name):
                return
            try:
                await self._client.files_upload_v2(channel=channel, thread_ts=ts, content=png, filename=name, title=title, alt_txt=alt)
                log.info("Chart %s uploaded to the thread %s", name, ts)
                return
            except Exception as err:
                error = delivery_error("files.upload", err)
                # SlackRequestError: the upload URL (Slack's file storage) refused the bytes: a new URL may take them.
                if not (error.retryable or isinstance(err, SlackRequestError)) or attempt == self._max_retries:
                    log.warning("Chart %s not uploaded (the bot needs files:write): %s", name, error)
                    return
                await asyncio.sleep(self._interval.calculate_sleep_duration(attempt))

    async def has_chart(self, channel: str, ts: str, key: str) -> bool:
        """Whether the thread holds the chart ``upload`` uploads for ``key``."""
        return await self._has_file(channel, ts, _chart_name(key))

    async def _has_file(self, channel: str, ts: str, name: str) -> bool:
        """Whether the thread already holds a file of this name (an upload in doubt)."""
        response = await self._lookup("conversations.replies", self._client.conversations_replies(channel=channel, ts=ts, limit=200))
        messages = response.get("messages") or [] if response is not None else []
        return any(f.get("name") == name for m in messages for f in m.get("files") or [])

    async def close(self) -> None:
        """Nothing to release: slack-sdk opens a session per call."""

    async def _change_thread(
        self, event: AlertEvent, state: DeliveryState, text: str, blocks: list[dict[str, Any]], *, in_doubt: bool
    ) -> None:
        """Edit the thread's message to the event's state (reminders leave it), then reply with the change."""
        assert state.channel and state.root_ts
        channel, root = state.channel, state.root_ts
        if event.kind != "reminder":
            await self._update(channel, root, text, blocks, root=True)
        reply = render_update(event, previous_severity=state.severity, previously_firing=state.firing)
        await self._post(channel, event, text=reply, thread_ts=root, in_doubt=in_doubt)
        log.info("Alert %s (%s) delivered to the Slack thread %s in %s", event.id, event.kind, root, channel)

    async def _update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]], *, root: bool = False) -> None:
        """``chat.update``, idempotent, so retried on any failure worth retrying."""
        try:
            await self._client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
        except Exception as err:
            if root and _code(err) == "message_not_found":
                raise _RootGone from None
            raise delivery_error("chat.update", err) from None

    async def _post(
        self,
        channel: str,
        event: AlertEvent | _Keyed,
        *,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        thread_ts: str | None = None,
        in_doubt: bool,
    ) -> tuple[str, str, bool]:
        """``chat.postMessage`` exactly once: the channel ID and ts of the message, and whether it was found, not posted."""
        metadata = {"event_type": EVENT_TYPE, "event_payload": {"id": event.id, "thread": event.thread}}
        args: dict[str, Any] = dict(channel=channel, text=text, metadata=metadata)
        if blocks is not None:
            args["blocks"] = blocks
        if thread_ts is not None:
            args["thread_ts"] = thread_ts
        failures = 0
        while True:
            if in_doubt:
                found = await self._find(channel, event.id, thread_ts)
                if found:
                    log.info("Alert %s was already posted (ts %s); not posting it again", event.id, found[1])
                    return *found, True
            self._clean.discard(event.id)  # from here on, an interrupted delivery is in doubt
            try:
                response = await self._post_client.chat_postMessage(**args)
            except Exception as err:
                if thread_ts is not None and _code(err) == "thread_not_found":
                    raise _RootGone from None
                error = delivery_error("chat.postMessage", err)
                # 429s and connections that never opened were retried by slack-sdk and are
                # certain failures; after anything else the message may exist: look, then retry.
                if not error.retryable or failures >= self._max_retries or _certain(err):
                    raise error from None
                failures += 1
                in_doubt = True
                log.info("%s; checking whether it was posted before retrying", error)
                await asyncio.sleep(self._interval.calculate_sleep_duration(failures - 1))
                continue
            channel_id = response.get("channel") or channel
            if channel_id != channel:
                self._channel_ids[channel] = channel_id
            return channel_id, response["ts"], False

    async def _find(self, channel: str, event_id: str, thread_ts: str | None, *, pages: int = 1) -> tuple[str, str] | None:
        """The channel ID and ts of a message carrying this event id, if Slack has one."""
        channel_id = await self._channel_id(channel)
        if channel_id is None:
            return None
        pages = pages if thread_ts is None else _MAX_REPLY_PAGES
        cursor = None
        for _ in range(pages):
            if thread_ts is None:
                # Newest first: an opening in doubt is among the channel's latest messages.
                call = self._client.conversations_history(
                    channel=channel_id, include_all_metadata=True, limit=self._lookback, cursor=cursor
                )
                method = "conversations.history"
            else:
                call = self._client.conversations_replies(
                    channel=channel_id, ts=thread_ts, include_all_metadata=True, limit=200, cursor=cursor
                )
                method = "conversations.replies"
            response = await self._lookup(method, call)
            if response is None:
                return None
            for message in response.get("messages") or []:
                if _event_id(message) == event_id:
                    return channel_id, message["ts"]
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
        return None

    async def _channel_id(self, channel: str) -> str | None:
        """A channel's ID: conversations.* do not take ``#name``."""
        if _CHANNEL_ID.fullmatch(channel):
            return channel
        if channel in self._channel_ids:
            return self._channel_ids[channel]
        name, cursor = channel.removeprefix("#"), None
        while True:
            call = self._client.conversations_list(
                types="public_channel,private_channel", exclude_archived=True, limit=1000, cursor=cursor
            )
            response = await self._lookup("conversations.list", call)
            if response is None:
                return None
            for c in response.get("channels") or []:
                if c.get("name") == name:
                    self._channel_ids[channel] = c["id"]
                    return str(c["id"])
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                log.warning("Slack channel %s not found while checking for an alert in doubt", channel)
                return None

    async def _lookup(self, method: str, call: Any) -> Any:
        """A look-up's response; None (with a warning) if Slack refuses it, as a missing scope should not block alerts."""
        try:
            return await call
        except Exception as err:
            if _code(err) == "thread_not_found":
                raise _RootGone from None
            error = delivery_error(method, err)
            if error.retryable:
                raise error from None
            log.warning(
                "%s: cannot check whether an alert in doubt was already posted, so it may be posted twice "
                "(the bot needs channels:history and channels:read, or give channels by ID)", error,
            )
            return None


class _OneShotDelivery:
    """Begin, skip and the duplicate checks of deliveries that send each event once and keep no thread.

    Subclasses implement ``_send``: it runs only for events not yet delivered and shown to someone.
    """

    def begin(self, event: AlertEvent, state: DeliveryState | None) -> DeliveryState:
        """The state to store before ``deliver``: the event marked pending."""
        state = state or DeliveryState()
        return state if state.delivered_seq >= event.seq else replace(state, pending_id=event.id)

    def skip(self, event: AlertEvent, state: DeliveryState | None) -> DeliveryState:
        """Mark the event delivered without sending it."""
        return (state or DeliveryState()).delivered(event, shown=False)

    async def deliver(self, event: AlertEvent, state: DeliveryState | None) -> DeliveryState:
        """Send the event unless it was delivered already or resolves a thread never shown."""
        state = state or DeliveryState()
        if state.delivered_seq >= event.seq:
            return replace(state, pending_id=None) if state.pending_id == event.id else state
        if _never_shown(event, state):
            return state.delivered(event, shown=False)
        await self._send(event, state)
        return state.delivered(event)

    async def _send(self, event: AlertEvent, state: DeliveryState) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Nothing to release."""


class WebhookDelivery(_OneShotDelivery):
    """Every event is a new message: incoming webhooks cannot edit, reply in threads or read history.

    So an event in doubt after a crash cannot be checked: it is posted again (at least
    once, rather than exactly once), as is one whose post failed in a way that may
    have reached Slack. Events at or below ``delivered_seq`` are still skipped.
    """

    def __init__(
        self,
        *,
        url: SecretStr,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_interval: RetryIntervalCalculator | None = None,
        grafana_url: str | None = None,
    ) -> None:
        self._poster = WebhookPoster(url=url, max_retries=max_retries, retry_interval=retry_interval)
        self._grafana_url = grafana_url

    async def _send(self, event: AlertEvent, state: DeliveryState) -> None:
        """Post the event as a message of its own: updates say what changed, resolves say RESOLVED."""
        change = None
        if event.kind in ("updated", "reminder"):
            change = render_update(event, previous_severity=state.severity, previously_firing=state.firing)
        text, blocks = render_event(event, change=change, grafana_url=self._grafana_url)
        await self._poster.post(text=text, blocks=blocks)  # slack-sdk opens a session per call: nothing to close
        log.info("Alert %s (%s) posted to the Slack incoming webhook", event.id, event.kind)


class ConsoleDelivery(_OneShotDelivery):
    """Writes each event to a stream (stdout by default) under a banner, so a demo shows it."""

    def __init__(self, stream: TextIO | None = None, *, grafana_url: str | None = None) -> None:
        self._stream = stream
        self._grafana_url = grafana_url

    async def _send(self, event: AlertEvent, state: DeliveryState) -> None:
        """Write the thread's current state."""
        text, _ = render_event(event, grafana_url=self._grafana_url)
        log.info("Alert %s (%s) written to the console", event.id, event.kind)
        # Looked up at write time, so a replaced sys.stdout (pytest's capsys, a redirect) is honoured.
        stream = sys.stdout if self._stream is None else self._stream
        stream.write(f"\n=== ALERT {event.kind} {event.id} ===\n{text}\n")
        stream.flush()


def build_delivery(
    settings: SlackSettings,
    *,
    default_channel: str | None = None,
    grafana_url: str | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    feedback: Callable[[str | None], IncidentFeedback] | None = None,
    charts: bool = True,
) -> Delivery:
    """Slack threads if a bot token and channel are set, else the incoming webhook, else the console.

    ``default_channel`` (the config's ``alerting.default_channel``) takes the place of
    ``SLACK_CHANNEL`` for alerts that no route sends elsewhere.
    """
    channel = default_channel or settings.channel
    if settings.bot_token and channel:
        log.info("Alerts go to Slack, by default to channel %s", channel)
        return SlackThreadDelivery(
            token=settings.bot_token,
            default_channel=channel,
            api_url=settings.api_url,
            max_retries=max_retries,
            grafana_url=grafana_url,
            buttons=settings.app_token is not None,
            feedback=feedback,
            charts=charts,
        )
    if settings.webhook_url:
        log.info("Alerts go to a Slack incoming webhook (one message per change: webhooks cannot edit)")
        return WebhookDelivery(url=settings.webhook_url, max_retries=max_retries, grafana_url=grafana_url)
    # Said out loud: an operator who meant to configure Slack should notice.
    log.warning("No SLACK_* settings: alerts go to the log and stdout only")
    return ConsoleDelivery(grafana_url=grafana_url)


def _never_shown(event: AlertEvent, state: DeliveryState) -> bool:
    """A resolve of a thread nobody was shown (its opening was silenced): there is nothing to resolve."""
    if event.kind in ("resolved", "withdrawn") and state.root_ts is None and state.severity is None:
        log.info("Alert %s resolves a thread that was never shown; nothing to send", event.id)
        return True
    return False


def _event_id(message: dict[str, Any]) -> str | None:
    """The kpimon event id in a message's metadata, if it has one."""
    metadata = message.get("metadata") or {}
    if metadata.get("event_type") != EVENT_TYPE:
        return None
    payload = metadata.get("event_payload") or {}
    return payload.get("id") if isinstance(payload, dict) else None


def _certain(err: BaseException) -> bool:
    """A post failure that certainly posted nothing: rate limited, or no connection was made."""
    if isinstance(err, ClientConnectorError):
        return True
    return isinstance(err, SlackApiError) and err.response.status_code == 429


def _code(err: BaseException) -> str | None:
    """Slack's error code of a failed Web API call."""
    if isinstance(err, SlackApiError) and isinstance(err.response.data, dict):
        return err.response.data.get("error")
    return None


def _chart_name(key: str) -> str:
    return f"kpimon-{re.sub(r'[^A-Za-z0-9._-]+', '_', key)}.png"


@dataclass(frozen=True, slots=True)
class _Keyed:
    """What ``_post`` needs of a message that is not an alert event (a digest): its id."""

    id: str
    thread: str


class _RootGone(Exception):
    """The thread's message was deleted: the thread starts again with a new one."""
