"""The local Slack API itself, driven by slack-sdk's real client."""

from __future__ import annotations

import asyncio
import json

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.support.slack_api import SlackAPIServer, slack_api  # noqa: F401  (a fixture)

BLOCKS = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]


def test_form_bodies_and_chat_update(slack_api: SlackAPIServer) -> None:
    async def post_then_update() -> tuple[str, str]:
        client = AsyncWebClient(token=slack_api.token, base_url=slack_api.base_url)
        # A form-encoded call, as older clients make it: blocks arrive as a JSON string.
        form = {"channel": "C1", "text": "hi", "blocks": json.dumps(BLOCKS)}
        posted = await client.api_call("chat.postMessage", data=form)
        updated = await client.chat_update(channel="C1", ts=posted["ts"], text="hi again")
        return posted["ts"], updated["ts"]

    posted_ts, updated_ts = asyncio.run(post_then_update())

    assert posted_ts == updated_ts
    assert slack_api.messages == [{"channel": "C1", "text": "hi", "blocks": BLOCKS}]
    post, update = slack_api.requests
    assert post.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert (update.path, update.headers["Content-Type"]) == ("/api/chat.update", "application/json;charset=utf-8")


def test_unknown_message_cannot_be_updated(slack_api: SlackAPIServer) -> None:
    client = AsyncWebClient(token=slack_api.token, base_url=slack_api.base_url)

    with pytest.raises(SlackApiError) as caught:
        asyncio.run(client.chat_update(channel="C1", ts="1.000001", text="x"))

    assert caught.value.response["error"] == "message_not_found"
    assert [f.error for f in slack_api.failures] == ["message_not_found"]


def test_each_message_gets_its_own_ts(slack_api: SlackAPIServer) -> None:
    async def post_twice() -> list[str]:
        client = AsyncWebClient(token=slack_api.token, base_url=slack_api.base_url)
        return [(await client.chat_postMessage(channel="C1", text=t))["ts"] for t in ("a", "b")]

    first, second = asyncio.run(post_twice())

    assert first != second
