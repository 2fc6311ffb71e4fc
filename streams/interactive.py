"""Slack as a control surface: the buttons on incident messages, over Socket Mode.

The worker connects out to Slack with an app-level token (``SLACK_APP_TOKEN``): no public
endpoint. Slack hands each click to one of the connected workers, which takes it through:

    parse → authorize → decide → write → edit → acknowledge

- **parse** and **decide** are kpi_core/feedback.py's (pure): another app's button is
  acknowledged and ignored; a click by a user outside ``alerting.slack.allowed_users`` /
  ``allowed_groups`` changes nothing and is answered with an ephemeral explanation.
- **write**: the click record to the feedback topic (and, for *Silence 24 h*, the silence to
  the silences topic), and wait until Kafka has them. Every worker follows both topics, so
  every worker's outbox then holds back a snoozed incident's updates, and ``kpimon silence
  list`` shows the silence. A write that fails leaves the click unacknowledged: Slack delivers
  it again.
- **edit** the message to show who did what (and the buttons still to press).
- **acknowledge** the envelope: within ``ACK_WITHIN`` seconds of receipt (Slack wants 3 s);
  an edit still running then finishes after the acknowledgement.

Every step is idempotent (records keyed by the click, whose ``action_ts`` Slack repeats; a
silence id derived from it; an edit to the same content), so a click delivered twice, or
again after a worker was killed mid-way, has one effect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from alerts.render import refresh_feedback
from alerts.settings import SlackSettings
from alerts.slack import delivery_error, web_client
from kpi_core.config import SlackControls
from kpi_core.feedback import Decision, InvalidClick, allowed, decide, parse_click
from streams.silences import FeedbackWatcher

log = logging.getLogger("kpimon.slack.control")
_sdk_log = logging.getLogger("kpimon.slack.socket_mode")
_sdk_log.setLevel(logging.INFO)  # slack-sdk's DEBUG lines carry payloads

ACK_WITHIN = 2.0  # seconds: Slack retries an envelope not acknowledged within 3
GROUPS_TTL = 300.0  # seconds a user group's members are trusted before asking Slack again
GROUPS_WITHIN = 1.0  # seconds the user-group look-up may take before the click is refused

Write = Callable[[str, str, bytes], Awaitable[Any]]  # topic, key, value: durable once awaited


class SlackControl:
    """The Socket Mode connection and the click handling above."""

    def __init__(self, settings: SlackSettings, controls: SlackControls, watcher: FeedbackWatcher, write: Write, *,
                 silences_topic: str, count: Callable[[str], None] = lambda outcome: None) -> None:
        assert settings.app_token is not None and settings.bot_token is not None
        self.settings = settings
        self.controls = controls
        self.watcher = watcher
        self.write = write
        self.silences_topic = silences_topic
        self.count = count
        self.web = web_client(token=settings.bot_token, api_url=settings.api_url, max_retries=2)
        self.client: SocketModeClient | None = None
        self._members: tuple[float, frozenset[str]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Connect once the feedback topic is read (a click's edit shows what was done before it)."""
        await self.watcher.ready.wait()
        # apps.connections.open takes the app-level token; everything else the bot token.
        opener = web_client(token=self.settings.app_token, api_url=self.settings.api_url, max_retries=5)  # type: ignore[arg-type]
        self.client = SocketModeClient(app_token=self.settings.app_token.get_secret_value(),  # type: ignore[union-attr]
                                       web_client=opener, logger=_sdk_log, auto_reconnect_enabled=True)
        self.client.socket_mode_request_listeners.append(self._on_request)
        await self.client.connect()
        log.info("Slack Socket Mode connected: incident buttons are live")

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def _on_request(self, client: SocketModeClient, req: SocketModeRequest) -> None:
        received = time.monotonic()
        if req.type != "interactive":
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
            return
        try:
            visible = await self.handle(req.payload)
        except Exception as exc:  # noqa: BLE001 - not acknowledged: Slack delivers the click again
            log.warning("Slack click %s not recorded (%s); Slack will deliver it again", req.envelope_id, exc)
            self.count("failed")
            return
        if visible is not None:
            task = asyncio.ensure_future(visible)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.wait({task}, timeout=max(0.05, ACK_WITHIN - (time.monotonic() - received)))
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))

    async def handle(self, payload: dict[str, Any]) -> Awaitable[Any] | None:
        """Record one click durably; return what shows it (the edit, or the refusal), to run next."""
        try:
            click = parse_click(payload)
        except InvalidClick as exc:
            log.warning("Slack click ignored: %s", exc)
            self.count("invalid")
            return None
        if click is None:
            self.count("ignored")
            return None
        permitted, why = await self._permitted(click.user)
        known = self.watcher.feedback.get(click.ref.incident)
        repeat = self.watcher.feedback.knows(click)
        decision = decide(click, known, permitted=permitted, who=why)
        if decision.refusal is not None:
            log.info("Slack click by %s on %s refused: not an allowed user", click.user, click.ref.incident)
            self.count("refused")
            return self._refuse(click.channel, click.user, decision.refusal)
        # The silence first: a click recorded is shown as done, so what it promises must exist.
        for silence in decision.silences:
            await self.write(self.silences_topic, silence.id, silence.to_bytes())
        for key, value in decision.records:
            await self.write(self.watcher.topic, key, value)
        self.count("repeated" if repeat else "applied")
        log.info("Slack click: %s %s on %s", click.user, click.action, click.ref.incident)
        return self._edit(payload, decision)

    async def _permitted(self, user: str) -> tuple[bool, str]:
        users, groups = self.controls.allowed_users, self.controls.allowed_groups
        if not users and not groups or user in users:
            return True, ""
        try:
            # Bounded: the click is acknowledged within ACK_WITHIN whatever Slack's user groups do.
            members = await asyncio.wait_for(self._group_members(), GROUPS_WITHIN)
        except Exception as exc:  # noqa: BLE001 - refused, and said why
            error = delivery_error("usergroups.users.list", exc)
            log.warning("cannot check Slack user-group membership (the bot needs usergroups:read): %s", error)
            return False, "kpimon could not check your user groups just now; try again in a minute."
        allowed_to = " or ".join(filter(None, [users and f"users {', '.join(users)}", groups and f"user groups {', '.join(groups)}"]))
        return allowed(user, users, members, restricted=True), f"Only {allowed_to} may (alerting.slack in kpimon.yaml)."

    async def _group_members(self) -> frozenset[str]:
        now = time.monotonic()
        if self._members is None or now - self._members[0] > GROUPS_TTL:
            found: set[str] = set()
            for group in self.controls.allowed_groups:
                response = await self.web.usergroups_users_list(usergroup=group)
                found.update(response.get("users") or [])
            self._members = (now, frozenset(found))
        return self._members[1]

    async def _refuse(self, channel: str, user: str, text: str) -> None:
        try:
            await self.web.chat_postEphemeral(channel=channel, user=user, text=text)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not tell %s the click was refused: %s", user, delivery_error("chat.postEphemeral", exc))

    async def _edit(self, payload: dict[str, Any], decision: Decision) -> None:
        """Show the click on the message Slack sent with it: its feedback blocks replaced."""
        message = payload.get("message") or {}
        fb = decision.feedback
        assert fb is not None and fb.ref is not None
        text, blocks = refresh_feedback(str(message.get("text") or ""), message.get("blocks") or [], fb)
        channel, ts = payload["container"]["channel_id"], payload["container"]["message_ts"]
        try:
            await self.web.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
        except Exception as exc:  # noqa: BLE001 - the record is kept; the next update of the thread shows it
            log.warning("could not edit the message of %s after a click: %s", fb.ref.incident, delivery_error("chat.update", exc))
