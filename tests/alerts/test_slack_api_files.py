"""The local Slack API's v2 file upload, ephemeral messages, user groups and response URLs, driven by slack-sdk."""

from __future__ import annotations

import asyncio
import struct
import zlib
from typing import Any

import aiohttp
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from tests.support.slack_api import SlackAPIServer, UploadedFile


def png(width: int = 3, height: int = 2) -> bytes:
    """A real, tiny PNG: bytes that are not text, with a NUL and high bytes in them."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([200, 30, 30]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


PNG = png()


def web(server: SlackAPIServer) -> AsyncWebClient:
    return AsyncWebClient(base_url=server.base_url, token=server.token)


def test_files_upload_v2_lands_in_the_thread(slack_api: SlackAPIServer) -> None:
    async def upload() -> tuple[str, str, dict[str, Any], dict[str, Any]]:
        client = web(slack_api)
        root = await client.chat_postMessage(channel="#kpi-alerts", text="CTR dropped 31%")
        done = await client.files_upload_v2(
            channel=root["channel"], thread_ts=root["ts"], content=PNG, filename="chart.png", title="CTR"
        )
        replies = await client.conversations_replies(channel=root["channel"], ts=root["ts"])
        return root["channel"], root["ts"], done.data, replies.data

    channel, ts, done, replies = asyncio.run(upload())

    [stored] = slack_api.files(channel, thread_ts=ts)
    assert stored == UploadedFile(done["file"]["id"], "chart.png", "CTR", PNG, channel, ts, None)
    assert done["files"] == [{"id": stored.id, "title": "CTR"}]
    assert slack_api.files("#kpi-alerts") == [stored] and slack_api.files(thread_ts="1.000001") == []
    [parent, share] = replies["messages"]
    assert parent["reply_count"] == 1 and share["thread_ts"] == ts
    [shared] = share["files"]
    assert shared == {"id": stored.id, "name": "chart.png", "title": "CTR", "mimetype": "image/png", "size": len(PNG)}
    [message] = slack_api.channel_messages(channel)
    assert message.replies[0].files == share["files"] and len(message.replies[0].to_api(with_metadata=False)["files"]) == 1
    upload = next(r for r in slack_api.requests if r.path.startswith("/upload/"))
    # aiohttp posts the raw bytes, no form around them.
    assert upload.body == {"bytes": len(PNG)} and upload.headers["Content-Type"] == "application/octet-stream"


def test_the_sync_client_uploads_through_urllib(slack_api: SlackAPIServer) -> None:
    client = WebClient(base_url=slack_api.base_url, token=slack_api.token)
    channel = slack_api.channel_id("#kpi-charts")

    done = client.files_upload_v2(channel=channel, file=PNG, filename="spend.png", initial_comment="Spend, 7 days")

    [stored] = slack_api.files("#kpi-charts")
    assert (stored.id, stored.title, stored.content, stored.thread_ts) == (done["file"]["id"], "spend.png", PNG, None)
    [message] = slack_api.channel_messages(channel)
    assert message.text == "Spend, 7 days" and message.files is not None and message.files[0]["size"] == len(PNG)
    upload = next(r for r in slack_api.requests if r.path.startswith("/upload/"))
    # urllib labels the bytes as a form; they must not be read as one.
    assert upload.headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_a_multipart_upload_keeps_the_file_part(slack_api: SlackAPIServer) -> None:
    async def upload() -> tuple[str, str]:
        client = web(slack_api)
        channel = slack_api.channel_id("#kpi-charts")
        ticket = await client.files_getUploadURLExternal(filename="chart.png", length=len(PNG), alt_txt="CTR by day")
        form = aiohttp.FormData()
        form.add_field("filename", PNG, filename="chart.png", content_type="image/png")
        async with aiohttp.ClientSession() as session, session.post(ticket["upload_url"], data=form) as answer:
            text = await answer.text()
        await client.files_completeUploadExternal(files=[{"id": ticket["file_id"]}], channel_id=channel)
        return ticket["file_id"], text

    file_id, answered = asyncio.run(upload())

    assert answered == f"OK - {len(PNG)}"
    [stored] = slack_api.files()
    assert (stored.id, stored.content, stored.title, stored.alt_text) == (file_id, PNG, "chart.png", "CTR by day")


def test_a_failed_upload_raises_and_stores_nothing(slack_api: SlackAPIServer) -> None:
    async def upload() -> dict[str, Any]:
        client = web(slack_api)
        root = await client.chat_postMessage(channel="#kpi-alerts", text="CTR dropped")
        slack_api.fail_uploads(1)
        with pytest.raises(SlackRequestError, match="status: 500"):
            await client.files_upload_v2(channel=root["channel"], thread_ts=root["ts"], content=PNG, filename="chart.png")
        assert slack_api.files() == [] and slack_api.thread(root["channel"], root["ts"])[0].replies == []
        again = await client.files_upload_v2(channel=root["channel"], content=PNG, filename="chart.png")  # only one failed
        return again.data

    again = asyncio.run(upload())

    assert [f.id for f in slack_api.files()] == [again["file"]["id"]]
    [failed] = [r for r in slack_api.failures if r.path.startswith("/upload/")]
    assert (failed.status, failed.error) == (500, "internal_error")


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ({"channel": "C0NOSUCH"}, "channel_not_found"),
        ({"channel": "#kpi-alerts"}, "channel_not_found"),  # like Slack, an ID is wanted
        ({"channel": "ID", "thread_ts": "1.000001"}, "thread_not_found"),
    ],
)
def test_a_bad_destination_is_refused(slack_api: SlackAPIServer, where: dict[str, str], error: str) -> None:
    cid = slack_api.channel_id("#kpi-alerts")
    args = {k: (cid if v == "ID" else v) for k, v in where.items()}

    with pytest.raises(SlackApiError) as caught:
        asyncio.run(web(slack_api).files_upload_v2(content=PNG, filename="chart.png", **args))

    assert caught.value.response["error"] == error
    assert slack_api.files() == [] and slack_api.channel_messages(cid) == []


def test_complete_upload_checks_the_upload(slack_api: SlackAPIServer) -> None:
    async def calls() -> list[str]:
        client = web(slack_api)
        channel = slack_api.channel_id("#kpi-alerts")
        errors = []
        for bad in ({"length": 10}, {"filename": "chart.png"}):
            with pytest.raises(SlackApiError) as caught:
                await client.api_call("files.getUploadURLExternal", params=bad)
            errors.append(caught.value.response["error"])
        never = await client.files_getUploadURLExternal(filename="chart.png", length=len(PNG))
        short = await client.files_getUploadURLExternal(filename="chart.png", length=len(PNG) + 1)
        async with aiohttp.ClientSession() as session, session.post(short["upload_url"], data=PNG) as answer:
            assert answer.status == 200
        for file_id in (never["file_id"], short["file_id"], "F0NOSUCH"):
            with pytest.raises(SlackApiError) as caught:
                await client.files_completeUploadExternal(files=[{"id": file_id}], channel_id=channel)
            errors.append(caught.value.response["error"])
        done = await client.files_upload_v2(channel=channel, content=b"x", filename="x.txt")
        with pytest.raises(SlackApiError) as caught:  # completing is once only
            await client.files_completeUploadExternal(files=[{"id": done["file"]["id"]}], channel_id=channel)
        return [*errors, caught.value.response["error"]]

    assert asyncio.run(calls()) == [
        "invalid_arguments",
        "invalid_arguments",
        "file_not_found",
        "file_upload_size_mismatch",
        "file_not_found",
        "file_not_found",
    ]
    assert [f.name for f in slack_api.files()] == ["x.txt"]


def test_ephemerals_and_usergroups_round_trip(slack_api: SlackAPIServer) -> None:
    slack_api.usergroups = {"S0GROWTH": ["U0ANNA", "U0BOB"]}

    async def calls() -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        client = web(slack_api)
        root = await client.chat_postMessage(channel="#kpi-alerts", text="CTR dropped")
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "Only growth can ack"}}]
        sent = await client.chat_postEphemeral(
            channel="#kpi-alerts", user="U0EVE", text="Only growth can ack", blocks=blocks, thread_ts=root["ts"]
        )
        members = await client.usergroups_users_list(usergroup="S0GROWTH")
        errors = []
        with pytest.raises(SlackApiError) as caught:
            await client.api_call("chat.postEphemeral", json={"channel": "#kpi-alerts", "text": "x"})
        errors.append(caught.value.response["error"])
        with pytest.raises(SlackApiError) as caught:
            await client.usergroups_users_list(usergroup="S0NOSUCH")
        errors.append(caught.value.response["error"])
        return sent.data, members.data, errors

    sent, members, errors = asyncio.run(calls())

    assert sent["ok"] is True and sent["message_ts"]
    [root] = slack_api.channel_messages("#kpi-alerts")
    assert slack_api.ephemerals("#kpi-alerts") == [
        {
            "user": "U0EVE",
            "text": "Only growth can ack",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "Only growth can ack"}}],
            "thread_ts": root.ts,
        }
    ]
    assert root.replies == []  # an ephemeral is not a message of the channel
    assert members["users"] == ["U0ANNA", "U0BOB"]
    assert errors == ["user_not_found", "no_such_subteam"]


def test_a_post_to_the_response_url_is_recorded(slack_api: SlackAPIServer) -> None:
    async def scenario() -> tuple[int, int]:
        client = web(slack_api)
        button = {"type": "button", "action_id": "ack", "text": {"type": "plain_text", "text": "Ack"}}
        blocks = [{"type": "actions", "elements": [button]}]
        root = await client.chat_postMessage(channel="#kpi-alerts", text="CTR dropped", blocks=blocks)
        answers: list[int] = []

        async def on_click(app: SocketModeClient, request: SocketModeRequest) -> None:
            await app.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
            reply = AsyncWebhookClient(request.payload["response_url"])
            answers.append((await reply.send(text="Acked by <@U0ANNA>", replace_original=False)).status_code)

        app = SocketModeClient(app_token=slack_api.app_token, web_client=client, ping_interval=0.5)
        app.socket_mode_request_listeners.append(on_click)
        await app.connect()
        try:
            await asyncio.to_thread(slack_api.click, root["channel"], root["ts"], "ack")
            while not answers:
                await asyncio.sleep(0.01)
        finally:
            await app.close()
        wrong = AsyncWebhookClient(slack_api.base_url.replace("/api/", "/actions/T0KPIMON/99/nope"))
        return answers[0], (await wrong.send(text="x")).status_code

    answered, unknown = asyncio.run(scenario())

    assert answered == 200 and unknown == 404
    assert slack_api.responses() == [{"text": "Acked by <@U0ANNA>", "replace_original": False}]
