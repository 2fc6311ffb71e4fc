"""The local Slack API's Socket Mode, driven by slack-sdk's real aiohttp SocketModeClient.

The server's helpers block; the coroutines below call them through asyncio.to_thread so the
client, on the same loop, keeps receiving meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from tests.support.slack_api import APP_ID, SlackAPIServer

ACK = {"type": "plain_text", "text": "Ack"}
BLOCKS = [
    {"type": "section", "text": {"type": "mrkdwn", "text": "*CTR* dropped 31% on growth"}},
    {
        "type": "actions",
        "block_id": "alert_actions",
        "elements": [
            {"type": "button", "action_id": "ack_alert", "text": ACK, "value": "t#1", "style": "primary"},
            {"type": "button", "action_id": "mute_alert", "text": {"type": "plain_text", "text": "Mute"}, "value": "t#1:1h"},
        ],
    },
]


class App:
    """A Socket Mode app as kpimon's worker runs one: slack-sdk's client, acking each request or not."""

    def __init__(self, server: SlackAPIServer, *, ack: bool = True, app_token: str | None = None) -> None:
        web = AsyncWebClient(base_url=server.base_url, token=server.token)
        # A short ping interval makes the client's retries (it sleeps one interval) quick.
        self.client = SocketModeClient(
            app_token=app_token or server.app_token,
            web_client=web,
            ping_interval=0.5,
            # Raw frames: slack-sdk handles a disconnect itself and hides it from message_listeners.
            on_message_listeners=[self._on_frame],
        )
        self.ack = ack
        self.requests: list[SocketModeRequest] = []
        self.frames: list[dict[str, Any]] = []  # every text frame, hello and disconnect included
        self.client.socket_mode_request_listeners.append(self._on_request)

    async def _on_frame(self, frame: aiohttp.WSMessage) -> None:
        self.frames.append(json.loads(frame.data))

    async def _on_request(self, client: SocketModeClient, request: SocketModeRequest) -> None:
        self.requests.append(request)
        if self.ack:
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))

    async def received(self, n: int) -> list[SocketModeRequest]:
        await until(lambda: len(self.requests) >= n, f"{n} request(s) to reach the app")
        return self.requests


async def until(condition: Callable[[], bool], what: str, timeout: float = 5) -> None:
    """Wait for ``condition`` on the running loop."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def post_alert(server: SlackAPIServer) -> tuple[str, str]:
    """Post a message with buttons through the real Web API client; its channel ID and ts."""
    web = AsyncWebClient(base_url=server.base_url, token=server.token)
    posted = await web.chat_postMessage(channel="#kpi-alerts", text="CTR dropped", blocks=BLOCKS)
    return posted["channel"], posted["ts"]


def opened(server: SlackAPIServer) -> int:
    return sum(r.path == "/api/apps.connections.open" for r in server.requests)


def test_a_click_reaches_the_app_and_a_redelivery_is_the_same_click(slack_api: SlackAPIServer) -> None:
    async def scenario() -> tuple[str, str, list[SocketModeRequest], float, float, dict[str, Any]]:
        channel, ts = await post_alert(slack_api)
        app = App(slack_api)
        await app.client.connect()
        try:
            await asyncio.to_thread(slack_api.wait_connected)
            envelope_id = await asyncio.to_thread(slack_api.click, channel, ts, "ack_alert")
            first = await asyncio.to_thread(slack_api.wait_ack, envelope_id)
            await asyncio.to_thread(slack_api.redeliver, envelope_id)
            second = await asyncio.to_thread(slack_api.wait_ack, envelope_id)
            again = await asyncio.to_thread(slack_api.click, channel, ts, "ack_alert")
            await app.received(3)
            return channel, ts, app.requests, first, second, slack_api.payload(again)
        finally:
            await app.client.close()

    channel, ts, [click, retry, again], first, second, again_payload = asyncio.run(scenario())

    assert click.type == "interactive" and click.retry_attempt == 0 and click.accepts_response_payload is False
    payload = click.payload
    assert payload["type"] == "block_actions" and payload["api_app_id"] == APP_ID
    assert payload["user"]["id"] == "U0ANNA" and payload["user"]["username"] == "anna"
    [action] = payload["actions"]
    assert (action["action_id"], action["value"], action["block_id"], action["style"]) == (
        "ack_alert",
        "t#1",
        "alert_actions",
        "primary",
    )
    assert action["type"] == "button" and action["text"] == ACK
    assert payload["container"] == {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False}
    assert payload["channel"] == {"id": channel, "name": "kpi-alerts"}
    [section, actions] = payload["message"]["blocks"]
    assert payload["message"]["ts"] == ts and actions == BLOCKS[1]
    assert section == BLOCKS[0] | {"block_id": section["block_id"]}  # Slack gives every block an ID
    assert payload["response_url"].startswith("http://127.0.0.1:")
    assert slack_api.payload(click.envelope_id) == payload
    assert 0 <= first < 2 and 0 <= second < 2  # measured from each send to its ack

    # Slack's retry: the same envelope and payload (same action_ts), marked as a retry.
    assert (retry.envelope_id, retry.payload, retry.retry_attempt, retry.retry_reason) == (
        click.envelope_id,
        payload,
        1,
        "timeout",
    )
    assert slack_api.acks(click.envelope_id) == 2
    # A second click is another action.
    assert again.envelope_id != click.envelope_id and again.payload == again_payload
    assert again_payload["actions"][0]["action_ts"] != action["action_ts"]
    assert again_payload["trigger_id"] != payload["trigger_id"]
    assert [d.envelope_id for d in slack_api.deliveries] == [click.envelope_id, click.envelope_id, again.envelope_id]


def test_an_app_that_does_not_ack_fails_wait_ack(slack_api: SlackAPIServer) -> None:
    async def scenario() -> str:
        channel, ts = await post_alert(slack_api)
        app = App(slack_api, ack=False)
        await app.client.connect()
        try:
            envelope_id = await asyncio.to_thread(slack_api.click, channel, ts, "mute_alert")
            await app.received(1)  # it got the click, and kept quiet
            with pytest.raises(AssertionError, match="no ack for envelope"):
                await asyncio.to_thread(slack_api.wait_ack, envelope_id, 0.3)
            return envelope_id
        finally:
            await app.client.close()

    envelope_id = asyncio.run(scenario())

    assert slack_api.acks(envelope_id) == 0
    assert slack_api.payload(envelope_id)["actions"][0]["value"] == "t#1:1h"


def test_ignored_acks_look_missing_until_acks_count_again(slack_api: SlackAPIServer) -> None:
    async def scenario() -> tuple[str, float, int]:
        channel, ts = await post_alert(slack_api)
        app = App(slack_api)
        await app.client.connect()
        try:
            slack_api.ignore_acks = True
            envelope_id = await asyncio.to_thread(slack_api.click, channel, ts, "ack_alert")
            await app.received(1)
            with pytest.raises(AssertionError, match="ignore_acks=True"):
                await asyncio.to_thread(slack_api.wait_ack, envelope_id, 0.3)
            lost = slack_api.acks(envelope_id)
            slack_api.ignore_acks = False
            await asyncio.to_thread(slack_api.redeliver, envelope_id)
            return envelope_id, await asyncio.to_thread(slack_api.wait_ack, envelope_id), lost
        finally:
            await app.client.close()

    envelope_id, waited, lost = asyncio.run(scenario())

    assert lost == 0 and slack_api.acks(envelope_id) == 1 and waited >= 0
    assert [d.envelope["retry_attempt"] for d in slack_api.deliveries] == [0, 1]


def test_dropped_sockets_make_the_client_reconnect_by_itself(slack_api: SlackAPIServer) -> None:
    async def scenario() -> tuple[App, int, str]:
        channel, ts = await post_alert(slack_api)
        app = App(slack_api)
        await app.client.connect()
        try:
            await asyncio.to_thread(slack_api.wait_connected)
            await asyncio.to_thread(slack_api.drop_sockets)
            await asyncio.to_thread(slack_api.wait_connected)
            envelope_id = await asyncio.to_thread(slack_api.click, channel, ts, "ack_alert")
            await asyncio.to_thread(slack_api.wait_ack, envelope_id)
            return app, slack_api.socket_count, envelope_id
        finally:
            await app.client.close()

    app, connected, envelope_id = asyncio.run(scenario())

    assert connected == 1
    assert opened(slack_api) == 2  # a new URL for the new connection
    assert [f["type"] for f in app.frames] == ["hello", "disconnect", "hello", "interactive"]
    assert app.frames[1]["reason"] == "refresh_requested"
    assert [r.envelope_id for r in app.requests] == [envelope_id]
    assert slack_api.deliveries[0].socket == 2  # delivered on the new connection


def test_a_socket_closed_without_warning_is_reconnected_too(slack_api: SlackAPIServer) -> None:
    async def scenario() -> App:
        app = App(slack_api)
        await app.client.connect()
        try:
            await asyncio.to_thread(slack_api.wait_connected)
            await asyncio.to_thread(slack_api.drop_sockets, None)
            await asyncio.to_thread(slack_api.wait_connected)
            envelope_id = await asyncio.to_thread(slack_api.deliver, {"type": "block_actions", "actions": []})
            await asyncio.to_thread(slack_api.wait_ack, envelope_id)
            return app
        finally:
            await app.client.close()

    app = asyncio.run(scenario())

    assert [f["type"] for f in app.frames] == ["hello", "hello", "interactive"]
    assert opened(slack_api) == 2 and [d.socket for d in slack_api.deliveries] == [2]


@pytest.mark.parametrize(
    ("token", "error"),
    [("xapp-1-A0KPIMON-9999-wrong", "invalid_auth"), ("bot", "invalid_auth"), (None, "not_authed")],
)
def test_apps_connections_open_wants_the_app_token(slack_api: SlackAPIServer, token: str | None, error: str) -> None:
    web = AsyncWebClient(base_url=slack_api.base_url)
    token = slack_api.token if token == "bot" else token

    with pytest.raises(SlackApiError) as caught:
        asyncio.run(web.api_call("apps.connections.open", headers={"Authorization": f"Bearer {token}"} if token else {}))

    assert caught.value.response["error"] == error
    [refused] = slack_api.failures
    assert (refused.path, refused.error) == ("/api/apps.connections.open", error)


def test_the_app_token_opens_connections_only(slack_api: SlackAPIServer) -> None:
    async def calls() -> tuple[dict[str, Any], str]:
        web = AsyncWebClient(base_url=slack_api.base_url, token=slack_api.token)
        url = await web.apps_connections_open(app_token=slack_api.app_token)
        with pytest.raises(SlackApiError) as caught:
            await web.chat_postMessage(channel="#kpi-alerts", text="x", token=slack_api.app_token)
        return url.data, caught.value.response["error"]

    opened_url, error = asyncio.run(calls())

    assert opened_url["ok"] is True and opened_url["url"].startswith("ws://127.0.0.1:")
    assert "/link/?ticket=" in opened_url["url"] and opened_url["url"].endswith(f"&app_id={APP_ID}")
    assert error == "not_allowed_token_type"


def test_a_client_with_a_bad_app_token_keeps_asking_and_never_connects(slack_api: SlackAPIServer) -> None:
    async def scenario() -> None:
        app = App(slack_api, app_token="xapp-1-A0KPIMON-9999-wrong")
        try:
            # slack-sdk logs the invalid_auth and retries every ping interval, forever.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(app.client.connect(), timeout=0.8)
        finally:
            await app.client.close()

    asyncio.run(scenario())

    refused = [r.error for r in slack_api.failures if r.path == "/api/apps.connections.open"]
    assert len(refused) >= 2 and set(refused) == {"invalid_auth"}
    assert slack_api.socket_count == 0


def test_injected_failures_hit_apps_connections_open_and_the_client_retries(slack_api: SlackAPIServer) -> None:
    async def scenario() -> None:
        app = App(slack_api)
        slack_api.fail_next(1, status=503)
        try:
            await app.client.connect()
            await asyncio.to_thread(slack_api.wait_connected, 1, 5)
        finally:
            await app.client.close()

    asyncio.run(scenario())

    [failed] = slack_api.failures
    assert (failed.path, failed.status) == ("/api/apps.connections.open", 503)
    assert opened(slack_api) == 1


def test_a_refused_upgrade_is_retried_until_the_socket_opens(slack_api: SlackAPIServer) -> None:
    async def scenario() -> list[str]:
        slack_api.socket_open = False
        app = App(slack_api)
        connecting = asyncio.ensure_future(app.client.connect())
        try:
            await until(lambda: sum(r.path == "/link/" for r in slack_api.failures) >= 2, "two refused upgrades")
            assert slack_api.socket_count == 0
            slack_api.socket_open = True
            await asyncio.wait_for(connecting, timeout=5)
            await until(lambda: len(app.frames) >= 1, "the hello")
            return [f["type"] for f in app.frames]
        finally:
            connecting.cancel()
            await app.client.close()

    assert asyncio.run(scenario()) == ["hello"]
    refused = [r for r in slack_api.failures if r.path == "/link/"]
    assert {(r.status, r.error) for r in refused} == {(503, "service_unavailable")}
    assert opened(slack_api) == 1  # slack-sdk retries the same URL after a failed upgrade


def test_envelopes_go_round_robin_over_the_open_connections(slack_api: SlackAPIServer) -> None:
    async def scenario() -> tuple[App, App]:
        first, second = App(slack_api), App(slack_api)
        try:
            await first.client.connect()
            await asyncio.to_thread(slack_api.wait_connected, 1)
            await second.client.connect()
            await asyncio.to_thread(slack_api.wait_connected, 2)
            for n in range(4):
                await asyncio.to_thread(slack_api.deliver, {"type": "block_actions", "n": n}, envelope_id=f"e{n}")
            await first.received(2)
            await second.received(2)
            return first, second
        finally:
            await first.client.close()
            await second.client.close()

    first, second = asyncio.run(scenario())

    assert [f["num_connections"] for f in first.frames[:1] + second.frames[:1]] == [1, 2]
    assert first.frames[0]["connection_info"] == {"app_id": APP_ID} and first.frames[0]["debug_info"]["host"] == "local"
    assert [r.payload["n"] for r in first.requests] == [0, 2]
    assert [r.payload["n"] for r in second.requests] == [1, 3]
    assert [d.socket for d in slack_api.deliveries] == [1, 2, 1, 2]
    assert all(slack_api.acks(f"e{n}") == 1 for n in range(4))


def test_click_reads_the_current_blocks(slack_api: SlackAPIServer) -> None:
    async def scenario() -> dict[str, Any]:
        channel, ts = await post_alert(slack_api)
        web = AsyncWebClient(base_url=slack_api.base_url, token=slack_api.token)
        acked = [BLOCKS[0], {"type": "actions", "elements": [{"type": "button", "action_id": "unack", "text": ACK}]}]
        await web.chat_update(channel=channel, ts=ts, text="CTR dropped (acked)", blocks=acked)
        with pytest.raises(AssertionError, match=r"no button 'ack_alert'.*\['unack'\]"):
            slack_api.click(channel, ts, "ack_alert")
        with pytest.raises(AssertionError, match="no message"):
            slack_api.click(channel, "1.000001", "unack")
        app = App(slack_api)
        await app.client.connect()
        try:
            envelope_id = await asyncio.to_thread(slack_api.click, "#kpi-alerts", ts, "unack", user="U0BOB", username="bob")
            [request] = await app.received(1)
            assert request.envelope_id == envelope_id
            return request.payload
        finally:
            await app.client.close()

    payload = asyncio.run(scenario())

    [action] = payload["actions"]
    assert action["action_id"] == "unack" and "value" not in action and "style" not in action
    [section, actions] = payload["message"]["blocks"]
    assert action["block_id"] == actions["block_id"] != section["block_id"]  # Slack gives every block an ID
    assert payload["message"]["text"] == "CTR dropped (acked)" and payload["user"]["id"] == "U0BOB"


def test_a_ticket_not_handed_out_is_closed(slack_api: SlackAPIServer) -> None:
    async def connect() -> tuple[aiohttp.WSMsgType, int | None]:
        web = AsyncWebClient(base_url=slack_api.base_url)
        url = (await web.apps_connections_open(app_token=slack_api.app_token))["url"]
        bogus = url.split("?")[0] + "?ticket=not-a-ticket"
        async with aiohttp.ClientSession() as session, session.ws_connect(bogus) as ws:
            frame = await ws.receive(timeout=5)
            return frame.type, ws.close_code

    kind, code = asyncio.run(connect())

    assert kind == aiohttp.WSMsgType.CLOSE and code == aiohttp.WSCloseCode.POLICY_VIOLATION
    assert [r.error for r in slack_api.failures] == ["invalid_ticket"]
    assert json.dumps(slack_api.requests_json())  # the upgrades are recorded and JSON-ready
