"""The local Slack API's threads, metadata, edits and history, driven by slack-sdk's real client."""

from __future__ import annotations

import asyncio
import json

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.support.slack_api import SlackAPIServer

METADATA = {"event_type": "kpimon_alert", "event_payload": {"id": "t#1"}}


def test_threads_metadata_edits_and_history(slack_api: SlackAPIServer) -> None:
    async def conversation() -> tuple[dict, dict, dict, dict]:
        client = AsyncWebClient(token=slack_api.token, base_url=slack_api.base_url)
        root = await client.chat_postMessage(channel="#kpi-alerts", text="root", metadata=METADATA)
        # A form-encoded reply: metadata arrives as a JSON string.
        form = {"channel": root["channel"], "text": "reply", "thread_ts": root["ts"], "metadata": json.dumps(METADATA)}
        await client.api_call("chat.postMessage", data=form)
        await client.chat_postMessage(channel="#kpi-alerts", text="later")
        await client.chat_update(channel=root["channel"], ts=root["ts"], text="root, edited")
        history = await client.conversations_history(channel=root["channel"], include_all_metadata=True, limit=10)
        plain = await client.conversations_history(channel=root["channel"], oldest=root["ts"])
        replies = await client.conversations_replies(channel=root["channel"], ts=root["ts"], include_all_metadata=True)
        return root.data, history.data, plain.data, replies.data

    root, history, plain, replies = asyncio.run(conversation())

    cid = slack_api.channel_id("#kpi-alerts")
    assert root["channel"] == cid != "#kpi-alerts"  # like Slack, a name is answered with the channel's ID
    assert [m["text"] for m in history["messages"]] == ["later", "root, edited"]  # newest first, no replies
    assert history["messages"][1]["metadata"] == METADATA and history["messages"][1]["reply_count"] == 1
    assert [m["text"] for m in plain["messages"]] == ["later"] and "metadata" not in plain["messages"][0]
    assert [(m["text"], m.get("metadata")) for m in replies["messages"]] == [("root, edited", METADATA), ("reply", METADATA)]
    assert [r.method for r in slack_api.requests[-3:]] == ["GET", "GET", "GET"]  # slack-sdk sends conversations.* as GET

    [message, later] = slack_api.channel_messages("#kpi-alerts")
    assert [e["text"] for e in message.edits] == ["root, edited"] and later.edits == []
    assert [m.text for m in slack_api.thread(cid, message.replies[0].ts)] == ["root, edited", "reply"]


@pytest.mark.parametrize(
    ("method", "args", "error"),
    [
        ("chat.postMessage", {"channel": "C1", "text": "x", "thread_ts": "1.000001"}, "thread_not_found"),
        ("chat.postMessage", {"channel": "C1", "text": "x", "metadata": {"event_payload": {}}}, "invalid_metadata_format"),
        ("conversations.history", {"channel": "#kpi-alerts"}, "channel_not_found"),  # conversations.* want the ID
        ("conversations.replies", {"channel": "C1", "ts": "1.000001"}, "thread_not_found"),
    ],
)
def test_refusals(slack_api: SlackAPIServer, method: str, args: dict, error: str) -> None:
    slack_api.channel_id("C1")
    slack_api.channel_id("#kpi-alerts")
    client = AsyncWebClient(token=slack_api.token, base_url=slack_api.base_url)

    with pytest.raises(SlackApiError) as caught:
        asyncio.run(client.api_call(method, json=args))

    assert caught.value.response["error"] == error


def test_pages_follow_the_cursor(slack_api: SlackAPIServer) -> None:
    async def pages() -> list[list[str]]:
        client = AsyncWebClient(token=slack_api.token, base_url=slack_api.base_url)
        for text in "abc":
            await client.chat_postMessage(channel="C1", text=text)
        out, cursor = [], None
        while True:
            page = await client.conversations_history(channel="C1", limit=2, cursor=cursor)
            out.append([m["text"] for m in page["messages"]])
            cursor = page["response_metadata"]["next_cursor"]
            if not cursor:
                return out

    assert asyncio.run(pages()) == [["c", "b"], ["a"]]
