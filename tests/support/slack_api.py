"""A real Slack Web API, Socket Mode and incoming webhook on localhost, for tests.

It answers, the way Slack does:

- ``chat.postMessage`` (with ``thread_ts`` and ``metadata``), ``chat.update``, ``chat.postEphemeral``,
  ``conversations.history``, ``conversations.replies``, ``conversations.list``,
  ``usergroups.users.list`` (from ``server.usergroups``) and ``POST /webhook/...``;
- Socket Mode: ``apps.connections.open`` (app token only) and the WebSocket it points to,
  which says hello, delivers interaction envelopes round-robin over the open sockets and
  counts the acks; ``response_url`` POSTs are recorded;
- the v2 file upload: ``files.getUploadURLExternal``, the upload URL (raw or multipart
  bytes) and ``files.completeUploadExternal``, which shares the file in a channel or thread.

It keeps the messages (with their replies, edits and file shares), records every request
and fails on demand so retries can be counted::

    slack_api.fail_next(1, status=429, retry_after=1)
    slack_api.outage(2.0, statuses=[503, 429])
    slack_api.fail_uploads(1)  # the storage behind upload URLs answers 500 once
    slack_api.channel_messages("#kpi-alerts")[0].replies

A button click goes to the app over Socket Mode, and the test sees whether it was acked;
an uploaded chart is kept with its bytes::

    envelope_id = slack_api.click(channel_id, ts, "ack_alert")  # from the message's current blocks
    slack_api.wait_ack(envelope_id)  # seconds until the app acked (AssertionError if it did not)
    slack_api.redeliver(envelope_id)  # what Slack does when no ack came in time
    slack_api.responses()  # what the app POSTed to the click's response_url
    [chart] = slack_api.files("#kpi-alerts", thread_ts=ts)  # chart.content: the bytes uploaded

Socket Mode helpers (``wait_connected``, ``deliver``, ``click``, ``wait_ack`` ...) block the
calling thread; from a coroutine run them with ``await asyncio.to_thread(...)`` so the client
on that loop can go on receiving.

Like Slack, channels have IDs: ``chat.*`` accept a ``#name`` and answer with the ID,
``conversations.history``, ``conversations.replies`` and ``files.completeUploadExternal``
want the ID (``channel_not_found`` otherwise). Web API calls may come as GET (query string)
or POST (JSON or form body). Injected failures (``fail_next``, ``outage``) hit Web API
methods, webhooks and response URLs; upload URLs (another host at Slack) only fail through
``fail_uploads``, the WebSocket only through ``socket_open = False``.

Use the ``slack_api`` fixture, or ``with SlackAPIServer() as server:``.
"""

from __future__ import annotations

import asyncio
import copy
import email.parser
import email.policy
import hashlib
import itertools
import json
import mimetypes
import re
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import WSCloseCode, WSMsgType, web

DEFAULT_TOKEN = "xoxb-test-0000-kpimon"
APP_TOKEN = "xapp-1-A0KPIMON-0000-test"  # the app-level token Socket Mode connects with
APP_ID = "A0KPIMON"
TEAM = {"id": "T0KPIMON", "domain": "kpimon"}
VERIFICATION_TOKEN = "kpimon-legacy-verification-token"  # Slack still puts one in every interaction payload

# The error code Slack puts in the body of each failure status.
_STATUS_ERRORS = {429: "ratelimited", 500: "internal_error", 502: "bad_gateway", 503: "service_unavailable"}
_JSON_FIELDS = ("blocks", "attachments", "metadata")  # form bodies carry these as JSON strings
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]+")
_METHODS = (
    "chat.postMessage",
    "chat.update",
    "chat.postEphemeral",
    "conversations.history",
    "conversations.replies",
    "conversations.list",
    "usergroups.users.list",
    "files.getUploadURLExternal",
    "files.completeUploadExternal",
)
_APP_METHODS = ("apps.connections.open",)  # the only methods an app-level token may call
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as the server saw it, with its answer."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int
    error: str | None  # Slack's error code when the request was not accepted
    at: float  # time.monotonic() on arrival, to check how long a client waited


@dataclass(slots=True)
class Message:
    """A message as the server keeps it; ``replies`` (top-level messages only) oldest first."""

    channel: str  # the channel ID
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] | None = None
    thread_ts: str | None = None  # the parent's ts, for a reply
    replies: list[Message] = field(default_factory=list)
    edits: list[dict[str, Any]] = field(default_factory=list)  # each chat.update's new text and blocks, in order
    files: list[dict[str, Any]] | None = None  # the files a files.completeUploadExternal shared with this message

    def __getitem__(self, key: str) -> Any:
        """``message["text"]`` as well as ``message.text``."""
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def to_api(self, *, with_metadata: bool) -> dict[str, Any]:
        """The message as conversations.* return it."""
        out: dict[str, Any] = {"type": "message", "bot_id": "B0KPIMON", "ts": self.ts, "text": self.text}
        if self.blocks is not None:
            out["blocks"] = self.blocks
        if self.files is not None:
            out["files"] = self.files
        if self.thread_ts:
            out["thread_ts"] = self.thread_ts
        elif self.replies:
            out |= {"thread_ts": self.ts, "reply_count": len(self.replies), "latest_reply": self.replies[-1].ts}
        if self.edits:
            out["edited"] = {"user": "B0KPIMON", "ts": self.edits[-1]["ts"]}
        if with_metadata and self.metadata is not None:
            out["metadata"] = self.metadata
        return out


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """A file shared by files.completeUploadExternal, with the exact bytes that reached the upload URL."""

    id: str
    name: str  # the filename given to files.getUploadURLExternal
    title: str
    content: bytes
    channel: str | None  # the channel ID; None when completed without a channel (a private file)
    thread_ts: str | None  # the thread's parent ts when shared as a reply
    alt_text: str | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One Socket Mode envelope as sent: ``socket`` numbers connections in the order they opened."""

    envelope_id: str
    envelope: dict[str, Any]
    socket: int
    at: float  # time.monotonic() just before the frame was written, so an ack can never precede it


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    retry_after: int | None


@dataclass(slots=True)
class _Upload:
    """A file between files.getUploadURLExternal and files.completeUploadExternal."""

    id: str
    filename: str
    length: int  # as announced; the bytes must match it
    alt_txt: str | None
    content: bytes | None = None  # None until the upload URL got the bytes


@dataclass(slots=True)
class _Socket:
    id: int
    ws: web.WebSocketResponse
    draining: bool = False  # told to disconnect: Slack delivers nothing more on it


class SlackAPIServer:
    """A local Slack API in background threads; every request is recorded, failures on demand.

    The Web API, webhooks, response URLs and upload URLs share a stdlib HTTP server; the
    Socket Mode WebSocket runs on aiohttp, on its own event loop and port, like wss-primary
    is a host of its own at Slack.
    """

    def __init__(self, *, token: str = DEFAULT_TOKEN, app_token: str = APP_TOKEN, socket_open: bool = True) -> None:
        self.token = token
        self.app_token = app_token
        self.socket_open = socket_open  # False: apps.connections.open still answers, the WebSocket upgrade gets 503
        self.ignore_acks = False  # True: acks are read and dropped, as if lost on the way
        self.usergroups: dict[str, list[str]] = {}  # usergroup ID -> user IDs, for usergroups.users.list
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # sockets opened or closed, acks arrived
        self._accepted: list[Recorded] = []
        self._failed: list[Recorded] = []
        self._queued: list[_Failure] = []
        self._outage_until = 0.0
        self._outage: Iterator[_Failure] = iter(())
        self._upload_failures: list[int] = []
        self._channels: dict[str, str] = {}  # name (without #) -> ID
        self._messages: dict[str, list[Message]] = {}  # channel ID -> top-level messages, oldest first
        self._ephemerals: dict[str, list[dict[str, Any]]] = {}  # channel ID -> chat.postEphemeral calls
        self._uploads: dict[str, _Upload] = {}  # file ID -> an upload not completed yet
        self._files: list[UploadedFile] = []
        self._ts = itertools.count(100)
        self._file_ids = itertools.count(1)
        self._tickets: set[str] = set()  # handed out by apps.connections.open, each good for one connection
        self._sockets: dict[int, _Socket] = {}  # open WebSockets, in the order they opened
        self._socket_ids = itertools.count(1)
        self._next_socket = 0  # round-robin position
        self._deliveries: list[Delivery] = []
        self._acks: dict[str, list[float]] = {}  # envelope ID -> time.monotonic() of each ack
        self._response_urls: set[str] = set()  # paths of the response_url handed out with each click
        self._last_action_ts = 0.0
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._http.daemon_threads = True
        self._http.api = self  # type: ignore[attr-defined]  # how handlers find this server
        # A short poll interval keeps shutdown, and so each test's teardown, quick.
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.01,), name="slack-api", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None  # the Socket Mode loop, made on entering
        self._loop_thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._socket_port = 0

    def __enter__(self) -> SlackAPIServer:
        self._thread.start()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="slack-socket-mode", daemon=True)
        self._loop_thread.start()
        try:
            self._run(self._start_sockets(), timeout=10)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        loop, thread = self._loop, self._loop_thread
        try:
            if loop is not None:
                self._run(self._stop_sockets(), timeout=10)
        finally:
            if loop is not None and thread is not None:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=5)
                loop.close()
                self._loop = self._loop_thread = None
            self._http.shutdown()
            self._http.server_close()
            self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        """The Web API base URL, e.g. ``http://127.0.0.1:PORT/api/``."""
        return f"http://127.0.0.1:{self._http.server_port}/api/"

    @property
    def webhook_url(self) -> str:
        """An incoming webhook URL; the last path segment plays the secret."""
        return f"http://127.0.0.1:{self._http.server_port}/webhook/T0000/B0000/webhook-secret-0000"

    @property
    def requests(self) -> list[Recorded]:
        """Accepted requests, in arrival order (WebSocket upgrades included, as ``GET /link/``)."""
        with self._lock:
            return list(self._accepted)

    @property
    def failures(self) -> list[Recorded]:
        """Requests that were refused: injected failures, bad tokens, bad arguments, refused upgrades."""
        with self._lock:
            return list(self._failed)

    def requests_json(self) -> list[dict[str, Any]]:
        """Every request, accepted or refused, in arrival order, as JSON-ready dicts (headers left out: they hold the token)."""
        with self._lock:
            recorded = sorted(self._accepted + self._failed, key=lambda r: r.at)
        return [
            {"method": r.method, "path": r.path, "status": r.status, "error": r.error, "body": r.body} for r in recorded
        ]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Bodies of accepted ``chat.postMessage`` calls."""
        return [r.body for r in self.requests if r.path == "/api/chat.postMessage"]

    @property
    def webhook_messages(self) -> list[dict[str, Any]]:
        """Bodies of accepted incoming-webhook posts."""
        return [r.body for r in self.requests if r.path.startswith("/webhook/")]

    def responses(self) -> list[dict[str, Any]]:
        """JSON bodies of accepted POSTs to the ``response_url`` of clicks, in arrival order."""
        return [r.body for r in self.requests if r.path.startswith("/actions/")]

    def channel_id(self, channel: str) -> str:
        """The ID of a channel given by ``#name``, ``name`` or ID; a new name gets a new channel."""
        with self._lock:
            return self._channel(channel, create=True) or ""

    def channel_messages(self, channel: str) -> list[Message]:
        """Top-level messages of a channel (by name or ID), oldest first, each with its replies and edits."""
        with self._lock:
            cid = self._channel(channel, create=False)
            return copy.deepcopy(self._messages.get(cid or "", []))

    def thread(self, channel: str, ts: str) -> list[Message]:
        """A thread: its parent message, then the replies oldest first."""
        with self._lock:
            parent = self._find(self._channel(channel, create=False) or "", ts)
            if parent is None:
                raise KeyError(f"no message {ts} in {channel}")
            if parent.thread_ts:
                parent = self._find(parent.channel, parent.thread_ts)
            assert parent is not None
            return copy.deepcopy([parent, *parent.replies])

    def ephemerals(self, channel: str) -> list[dict[str, Any]]:
        """``chat.postEphemeral`` calls in a channel (by name or ID): each ``{user, text, blocks, thread_ts}``."""
        with self._lock:
            cid = self._channel(channel, create=False)
            return copy.deepcopy(self._ephemerals.get(cid or "", []))

    def files(self, channel: str | None = None, thread_ts: str | None = None) -> list[UploadedFile]:
        """Completed uploads, oldest first; only those in ``channel`` (name or ID) and/or thread ``thread_ts`` if given."""
        with self._lock:
            cid = self._channel(channel, create=False) if channel is not None else None
            if channel is not None and cid is None:
                return []
            return [
                f
                for f in self._files
                if (cid is None or f.channel == cid) and (thread_ts is None or f.thread_ts == thread_ts)
            ]

    def fail_next(self, n: int, *, status: int = 503, retry_after: int | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` (and a Retry-After header if given).

        A 429 for ``apps.connections.open`` without ``retry_after`` makes slack-sdk's Socket
        Mode client sleep 30 seconds, its default for a missing Retry-After.
        """
        with self._lock:
            self._queued += [_Failure(status, retry_after)] * n

    def outage(self, seconds: float, *, statuses: Sequence[int] = (503, 429), retry_after: int = 1) -> None:
        """Fail every request for ``seconds``, cycling through ``statuses``; 429s carry Retry-After."""
        failures = [_Failure(s, retry_after if s == 429 else None) for s in statuses]
        with self._lock:
            self._outage_until = time.monotonic() + seconds
            self._outage = itertools.cycle(failures)

    def fail_uploads(self, n: int, status: int = 500) -> None:
        """Answer the next ``n`` POSTs to upload URLs with ``status``: the storage behind them failing, not the Web API."""
        with self._lock:
            self._upload_failures += [status] * n

    # Socket Mode. These block the calling thread: from a coroutine, use asyncio.to_thread.

    @property
    def socket_count(self) -> int:
        """WebSockets open now that envelopes may go to (not those told to disconnect)."""
        with self._lock:
            return len(self._open_sockets())

    @property
    def deliveries(self) -> list[Delivery]:
        """Every envelope sent, redeliveries included, in order."""
        with self._lock:
            return list(self._deliveries)

    def wait_connected(self, n: int = 1, timeout: float = 20) -> None:
        """Wait until at least ``n`` WebSockets are open."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._open_sockets()) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{len(self._open_sockets())} Socket Mode connection(s) open after {timeout}s, wanted {n}"
                    )
                self._changed.wait(remaining)

    def deliver(self, payload: dict[str, Any], *, envelope_id: str | None = None, timeout: float = 10) -> str:
        """Send ``payload`` in an interactive envelope to one open socket (round-robin); return the envelope ID.

        Waits up to ``timeout`` for a socket, as Slack holds events while an app reconnects.
        """
        envelope = {
            "envelope_id": envelope_id or str(uuid.uuid4()),
            "payload": payload,
            "type": "interactive",
            "accepts_response_payload": False,
            "retry_attempt": 0,
            "retry_reason": "",
        }
        self._send_envelope(envelope, timeout)
        return envelope["envelope_id"]

    def redeliver(self, envelope_id: str, *, timeout: float = 10) -> None:
        """Send an envelope again, same ID and payload, ``retry_attempt`` + 1: what Slack does when no ack came in time."""
        with self._lock:
            last = self._last_delivery(envelope_id)
        envelope = copy.deepcopy(last.envelope)
        envelope["retry_attempt"] += 1
        envelope["retry_reason"] = "timeout"
        self._send_envelope(envelope, timeout)

    def payload(self, envelope_id: str) -> dict[str, Any]:
        """The payload delivered under ``envelope_id``."""
        with self._lock:
            return copy.deepcopy(self._last_delivery(envelope_id).envelope["payload"])

    def acks(self, envelope_id: str) -> int:
        """How many acks arrived for ``envelope_id`` in total (none while ``ignore_acks``)."""
        with self._lock:
            return len(self._acks.get(envelope_id, []))

    def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> float:
        """Seconds from the envelope's last send to the first ack after it; AssertionError if none within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                sent = self._last_delivery(envelope_id).at
                acked = [at for at in self._acks.get(envelope_id, []) if at >= sent]
                if acked:
                    return acked[0] - sent
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    earlier = len(self._acks.get(envelope_id, []))
                    raise AssertionError(
                        f"no ack for envelope {envelope_id} within {timeout}s of its last delivery"
                        f" ({earlier} ack(s) before it, ignore_acks={self.ignore_acks})"
                    )
                self._changed.wait(remaining)

    def drop_sockets(self, reason: str | None = "refresh_requested", *, grace: float = 2.0) -> None:
        """Tell every open socket to disconnect, as Slack does before rotating a connection, then close it.

        Nothing more is delivered on them from now on. Like Slack, which closes some seconds
        after the warning, sockets get up to ``grace`` seconds to be closed by the client
        (slack-sdk reconnects at once on the warning); those still open are closed then.
        ``reason=None`` closes at once without a warning, as a connection that breaks.

        A warning with ``grace=0`` makes slack-sdk reconnect twice (on the close, then again on
        the warning, dropping the first new socket): an envelope sent in between can be lost.
        """
        with self._changed:
            sockets = self._open_sockets()
            for socket in sockets:
                socket.draining = True
            self._changed.notify_all()
        warning = None
        if reason is not None:
            warning = json.dumps({"type": "disconnect", "reason": reason, "debug_info": {"host": "local"}})
        self._run(self._drop(sockets, warning, grace), timeout=grace + 15)

    def click(
        self,
        channel: str,
        ts: str,
        action_id: str,
        *,
        user: str = "U0ANNA",
        username: str = "anna",
        envelope_id: str | None = None,
        timeout: float = 10,
    ) -> str:
        """Click button ``action_id`` of message ``ts`` as it reads now: deliver a block_actions payload, return its envelope ID.

        The payload is what Slack sends (user, container, channel, the message with its blocks
        and metadata, a ``response_url`` on this server, the action with a fresh ``action_ts``),
        so two clicks differ while ``redeliver`` of one click repeats it byte for byte.
        """
        with self._lock:
            cid = self._channel(channel, create=False)
            message = self._find(cid or "", ts)
            if cid is None or message is None:
                raise AssertionError(f"no message {ts} in {channel}")
            api_message = message.to_api(with_metadata=True)
            blocks = copy.deepcopy(message.blocks or [])
            block, button, present = _button(blocks, action_id, seed=f"{cid}/{ts}")
            if button is None:
                raise AssertionError(f"no button {action_id!r} in message {ts} of {channel}; its action_ids: {present}")
            if button.get("type", "button") != "button":
                raise AssertionError(f"{action_id!r} in message {ts} is a {button['type']}; click() presses buttons only")
            if blocks:
                api_message["blocks"] = blocks  # with the block_ids Slack gives blocks posted without one
            name = next((n for n, i in self._channels.items() if i == cid), cid)
            path = f"/actions/{TEAM['id']}/{len(self._response_urls) + 1}/{uuid.uuid4().hex}"
            self._response_urls.add(path)
            clicked = max(time.time(), self._last_action_ts + 0.000001)  # unique per click, even within a microsecond
            self._last_action_ts = clicked
        action = {
            "action_id": action_id,
            "block_id": block["block_id"],
            "text": button.get("text"),
            "value": button.get("value"),
            "type": button.get("type", "button"),
        }
        if action["value"] is None:
            del action["value"]
        if "style" in button:
            action["style"] = button["style"]
        action["action_ts"] = f"{clicked:.6f}"
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": username, "name": username, "team_id": TEAM["id"]},
            "api_app_id": APP_ID,
            "token": VERIFICATION_TOKEN,
            "container": {"type": "message", "message_ts": ts, "channel_id": cid, "is_ephemeral": False},
            "trigger_id": f"{int(clicked * 1000)}.{TEAM['id']}.{uuid.uuid4().hex}",
            "team": dict(TEAM),
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": cid, "name": name},
            "message": api_message,
            "state": {"values": {}},
            "response_url": f"http://127.0.0.1:{self._http.server_port}{path}",
            "actions": [action],
        }
        return self.deliver(payload, envelope_id=envelope_id, timeout=timeout)

    # The Socket Mode internals: the methods below run on the socket loop, or hand work to it.

    def _run(self, coro: Coroutine[Any, Any, _T], *, timeout: float) -> _T:
        """Run ``coro`` on the socket loop and wait for its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("Socket Mode runs only inside `with SlackAPIServer() as server:`")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start_sockets(self) -> None:
        app = web.Application()
        app.router.add_get("/link/", self._socket)
        # No access log and a short shutdown keep tests quiet and their teardown quick.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._socket_port = self._runner.addresses[0][1]

    async def _stop_sockets(self) -> None:
        with self._changed:
            sockets = list(self._sockets.values())
            self._sockets.clear()
            self._changed.notify_all()
        await asyncio.gather(*(s.ws.close(code=WSCloseCode.GOING_AWAY) for s in sockets), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _drop(self, sockets: list[_Socket], warning: str | None, grace: float) -> None:
        if warning is None:
            grace = 0.0
        for socket in sockets if warning is not None else ():
            try:
                await socket.ws.send_str(warning)
            except ConnectionError:  # already going
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not all(s.ws.closed for s in sockets):
            await asyncio.sleep(0.01)
        await asyncio.gather(*(s.ws.close(code=WSCloseCode.GOING_AWAY) for s in sockets), return_exceptions=True)

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        """One Socket Mode connection: hello, then read acks until it closes."""
        arrived = time.monotonic()
        headers, query = dict(request.headers.items()), dict(request.query.items())
        if not self.socket_open:
            self._record(Recorded("GET", "/link/", headers, query, 503, "service_unavailable", arrived))
            return web.Response(status=503, text="service_unavailable")
        ws = web.WebSocketResponse(autoping=True, timeout=2.0)  # autoping answers the client's pings
        await ws.prepare(request)
        with self._lock:
            valid = query.get("ticket") in self._tickets
            self._tickets.discard(query.get("ticket", ""))
            connections = len(self._open_sockets()) + 1
        if not valid:
            self._record(Recorded("GET", "/link/", headers, query, 101, "invalid_ticket", arrived))
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"invalid_ticket")
            return ws
        self._record(Recorded("GET", "/link/", headers, query, 101, None, arrived))
        hello = {
            "type": "hello",
            "num_connections": connections,
            "debug_info": {"host": "local", "approximate_connection_time": 18060},
            "connection_info": {"app_id": APP_ID},
        }
        await ws.send_str(json.dumps(hello))
        socket = _Socket(next(self._socket_ids), ws)
        with self._changed:  # only now, so nothing is delivered before the hello
            self._sockets[socket.id] = socket
            self._changed.notify_all()
        try:
            async for frame in ws:
                if frame.type == WSMsgType.TEXT:
                    self._on_frame(frame.data)
        finally:
            with self._changed:
                self._sockets.pop(socket.id, None)
                self._changed.notify_all()
        return ws

    def _on_frame(self, data: str) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            return
        if not isinstance(frame, dict) or "envelope_id" not in frame or self.ignore_acks:
            return
        with self._changed:
            self._acks.setdefault(str(frame["envelope_id"]), []).append(time.monotonic())
            self._changed.notify_all()

    def _send_envelope(self, envelope: dict[str, Any], timeout: float) -> None:
        """Write an envelope to the next open socket, waiting up to ``timeout`` for one; record the delivery."""
        envelope_id, text = envelope["envelope_id"], json.dumps(envelope)
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                while not self._open_sockets():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise AssertionError(f"no Socket Mode connection within {timeout}s to deliver {envelope_id}")
                    self._changed.wait(remaining)
                sockets = self._open_sockets()
                socket = sockets[self._next_socket % len(sockets)]
                self._next_socket += 1
            sent = time.monotonic()
            try:
                self._run(self._write(socket, text), timeout=max(deadline - sent, 1.0))
            except ConnectionError:  # it closed between choosing and writing: try the next one
                with self._changed:
                    self._sockets.pop(socket.id, None)
                if time.monotonic() >= deadline:
                    raise AssertionError(f"no Socket Mode connection took envelope {envelope_id} within {timeout}s")
                continue
            with self._lock:
                self._deliveries.append(Delivery(envelope_id, copy.deepcopy(envelope), socket.id, sent))
            return

    @staticmethod
    async def _write(socket: _Socket, text: str) -> None:
        if socket.ws.closed:
            raise ConnectionResetError("socket closed")
        await socket.ws.send_str(text)

    # The methods below run under self._lock.

    def _open_sockets(self) -> list[_Socket]:
        return [s for s in self._sockets.values() if not s.draining and not s.ws.closed]

    def _last_delivery(self, envelope_id: str) -> Delivery:
        for delivery in reversed(self._deliveries):
            if delivery.envelope_id == envelope_id:
                return delivery
        raise AssertionError(f"envelope {envelope_id} was never delivered")

    # Answering HTTP requests; these run on the HTTP server's threads.

    def _injected_failure(self) -> _Failure | None:
        with self._lock:
            if self._queued:
                return self._queued.pop(0)
            if time.monotonic() < self._outage_until:
                return next(self._outage)
            return None

    def _record(self, request: Recorded) -> None:
        with self._lock:
            (self._failed if request.error else self._accepted).append(request)

    def _answer(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, str | None, Any]:
        """Status, Slack error code (None when accepted) and response body of one request."""
        if path.startswith("/webhook/"):
            if not body.get("text") and not body.get("blocks"):
                return 400, "no_text", "no_text"
            return 200, None, "ok"
        if path.startswith("/actions/"):
            return self._respond(path, body)
        method = path.removeprefix("/api/")
        if method not in _METHODS and method not in _APP_METHODS:
            return _error("unknown_method", status=404)
        auth = headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else body.get("token")
        if not token:
            return _error("not_authed")
        if method in _APP_METHODS:
            return self._open_connection() if token == self.app_token else _error("invalid_auth")
        if token == self.app_token:  # an app-level token only opens connections
            return _error("not_allowed_token_type")
        if token != self.token:
            return _error("invalid_auth")
        if method == "conversations.list":
            with self._lock:
                channels = [{"id": cid, "name": name, "is_channel": True} for name, cid in self._channels.items()]
            return _page(body, "channels", channels)
        if method == "usergroups.users.list":
            users = self.usergroups.get(str(body.get("usergroup", "")))
            return (200, None, {"ok": True, "users": list(users)}) if users is not None else _error("no_such_subteam")
        with self._lock:
            if method == "files.getUploadURLExternal":
                return self._upload_url(body)
            if method == "files.completeUploadExternal":
                return self._complete_upload(body)
        if not body.get("channel"):
            return _error("channel_not_found")
        with self._lock:
            if method == "chat.postMessage":
                return self._post(body)
            if method == "chat.update":
                return self._update(body)
            if method == "chat.postEphemeral":
                return self._post_ephemeral(body)
            # Like Slack, conversations.* want the channel's ID, not its name.
            channel = body["channel"] if body["channel"] in self._messages else None
            if channel is None:
                return _error("channel_not_found")
            with_metadata = _flag(body.get("include_all_metadata"))
            if method == "conversations.history":
                return self._history(channel, body, with_metadata)
            return self._replies(channel, body, with_metadata)

    def _open_connection(self) -> tuple[int, str | None, Any]:
        ticket = str(uuid.uuid4())
        with self._lock:
            self._tickets.add(ticket)
        url = f"ws://127.0.0.1:{self._socket_port}/link/?ticket={ticket}&app_id={APP_ID}"
        return 200, None, {"ok": True, "url": url}

    def _respond(self, path: str, body: dict[str, Any]) -> tuple[int, str | None, Any]:
        """A POST to a click's response_url."""
        with self._lock:
            known = path in self._response_urls
        if not known:
            return _error("expired_url", status=404)
        if not body.get("text") and not body.get("blocks") and not _flag(body.get("delete_original")):
            return _error("no_text", status=400)
        return 200, None, {"ok": True}

    def _receive_upload(self, path: str, content_type: str, raw: bytes) -> tuple[int, str | None, str]:
        """Status, error code and plain-text answer of a POST to an upload URL."""
        with self._lock:
            if self._upload_failures:
                status = self._upload_failures.pop(0)
                error = _STATUS_ERRORS.get(status, "request_failed")
                return status, error, error
            upload = self._uploads.get(path.removeprefix("/upload/"))
            if upload is None:
                return 404, "file_not_found", "file_not_found"
            upload.content = _file_bytes(content_type, raw)
            return 200, None, f"OK - {len(upload.content)}"

    # The methods below run under self._lock.

    def _channel(self, channel: str, *, create: bool) -> str | None:
        if _CHANNEL_ID.fullmatch(channel):
            if create:
                self._channels.setdefault(channel.lower(), channel)
                self._messages.setdefault(channel, [])
            return channel
        name = channel.removeprefix("#")
        if name not in self._channels and create:
            cid = f"C{len(self._channels) + 1:08d}"
            self._channels[name], self._messages[cid] = cid, []
        return self._channels.get(name)

    def _find(self, channel: str, ts: str) -> Message | None:
        for message in self._messages.get(channel, []):
            if message.ts == ts:
                return message
            for reply in message.replies:
                if reply.ts == ts:
                    return reply
        return None

    def _thread_parent(self, channel: str, thread_ts: str) -> Message | None:
        """The top-level message of the thread ``thread_ts`` is in: a reply to a reply goes to its parent."""
        parent = self._find(channel, thread_ts)
        if parent is not None and parent.thread_ts:
            parent = self._find(channel, parent.thread_ts)
        return parent

    def _post(self, body: dict[str, Any]) -> tuple[int, str | None, Any]:
        if not body.get("text") and not body.get("blocks"):
            return _error("no_text")
        metadata = body.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict) and metadata.get("event_type") and isinstance(metadata.get("event_payload"), dict)
        ):
            return _error("invalid_metadata_format")
        channel = self._channel(body["channel"], create=True)
        assert channel is not None
        parent = None
        if body.get("thread_ts"):
            parent = self._thread_parent(channel, str(body["thread_ts"]))
            if parent is None:
                return _error("thread_not_found")
        ts = self._next_ts()
        message = Message(
            channel, ts, body.get("text", ""), body.get("blocks"), metadata, parent.ts if parent else None
        )
        (parent.replies if parent else self._messages[channel]).append(message)
        return 200, None, {"ok": True, "channel": channel, "ts": ts, "message": message.to_api(with_metadata=True)}

    def _update(self, body: dict[str, Any]) -> tuple[int, str | None, Any]:
        channel = self._channel(body["channel"], create=False)
        message = self._find(channel or "", str(body.get("ts", "")))
        if message is None:
            return _error("message_not_found")
        if not body.get("text") and not body.get("blocks"):
            return _error("no_text")
        message.text = body.get("text", "")
        if "blocks" in body:
            message.blocks = body["blocks"]
        message.edits.append({"ts": self._next_ts(), "text": message.text, "blocks": body.get("blocks")})
        reply = {"type": "message", "bot_id": "B0KPIMON", "ts": message.ts, "text": message.text}
        if message.blocks is not None:
            reply["blocks"] = message.blocks
        return 200, None, {"ok": True, "channel": message.channel, "ts": message.ts, "text": message.text, "message": reply}

    def _post_ephemeral(self, body: dict[str, Any]) -> tuple[int, str | None, Any]:
        if not body.get("user"):
            return _error("user_not_found")
        if not body.get("text") and not body.get("blocks"):
            return _error("no_text")
        channel = self._channel(body["channel"], create=True)
        assert channel is not None
        thread_ts = str(body["thread_ts"]) if body.get("thread_ts") else None
        text, blocks = body.get("text", ""), body.get("blocks")
        ephemeral = {"user": body["user"], "text": text, "blocks": blocks, "thread_ts": thread_ts}
        self._ephemerals.setdefault(channel, []).append(ephemeral)
        return 200, None, {"ok": True, "message_ts": self._next_ts()}

    def _upload_url(self, body: dict[str, Any]) -> tuple[int, str | None, Any]:
        filename, length = body.get("filename"), str(body.get("length", ""))
        if not filename or not length.isdigit():
            return _error("invalid_arguments")
        file_id = f"F{next(self._file_ids):010d}"
        self._uploads[file_id] = _Upload(file_id, str(filename), int(length), body.get("alt_txt") or None)
        url = f"http://127.0.0.1:{self._http.server_port}/upload/{file_id}"
        return 200, None, {"ok": True, "upload_url": url, "file_id": file_id}

    def _complete_upload(self, body: dict[str, Any]) -> tuple[int, str | None, Any]:
        try:
            files = json.loads(body["files"]) if isinstance(body.get("files"), str) else body.get("files")
        except ValueError:
            return _error("invalid_arguments")
        if not files or not isinstance(files, list) or not all(isinstance(f, dict) and f.get("id") for f in files):
            return _error("invalid_arguments")
        uploads = [self._uploads.get(str(f["id"])) for f in files]
        for upload in uploads:
            if upload is None or upload.content is None:  # unknown, completed already, or its bytes never came
                return _error("file_not_found")
            if len(upload.content) != upload.length:
                return _error("file_upload_size_mismatch")
        given = body.get("channel_id") or body.get("channels") or ""
        channels = [c.strip() for c in str(given).split(",") if c.strip()]
        if any(c not in self._messages for c in channels):  # like conversations.*, an ID is wanted
            return _error("channel_not_found")
        parent = None
        if body.get("thread_ts"):
            if len(channels) != 1:
                return _error("invalid_arguments")
            parent = self._thread_parent(channels[0], str(body["thread_ts"]))
            if parent is None:
                return _error("thread_not_found")
        done: list[UploadedFile] = []
        for f, upload in zip(files, uploads, strict=True):
            assert upload is not None and upload.content is not None
            del self._uploads[upload.id]  # completing is once only
            title = str(f.get("title") or upload.filename)
            done.append(UploadedFile(upload.id, upload.filename, title, upload.content, None, None, upload.alt_txt))
        shares = [
            {"id": f.id, "name": f.name, "title": f.title, "mimetype": _mimetype(f.name), "size": len(f.content)}
            for f in done
        ]
        for channel in channels:
            message = Message(channel, self._next_ts(), str(body.get("initial_comment") or ""), files=copy.deepcopy(shares))
            if parent is not None:
                message.thread_ts = parent.ts
                parent.replies.append(message)
            else:
                self._messages[channel].append(message)
            self._files += [
                UploadedFile(f.id, f.name, f.title, f.content, channel, message.thread_ts, f.alt_text) for f in done
            ]
        if not channels:  # a private file
            self._files += done
        return 200, None, {"ok": True, "files": [{"id": f.id, "title": f.title} for f in done]}

    def _history(self, channel: str, body: dict[str, Any], with_metadata: bool) -> tuple[int, str | None, Any]:
        oldest, latest = float(body.get("oldest") or 0), float(body.get("latest") or "inf")
        inclusive = _flag(body.get("inclusive"))
        messages = [
            m.to_api(with_metadata=with_metadata)
            for m in reversed(self._messages[channel])
            if (oldest <= float(m.ts) <= latest if inclusive else oldest < float(m.ts) < latest)
        ]
        return _page(body, "messages", messages)

    def _replies(self, channel: str, body: dict[str, Any], with_metadata: bool) -> tuple[int, str | None, Any]:
        parent = self._thread_parent(channel, str(body.get("ts", "")))
        if parent is None:
            return _error("thread_not_found")
        thread = [parent, *parent.replies]
        return _page(body, "messages", [m.to_api(with_metadata=with_metadata) for m in thread])

    def _next_ts(self) -> str:
        return f"1700000000.{next(self._ts):06d}"


def _error(code: str, *, status: int = 200) -> tuple[int, str | None, Any]:
    return status, code, {"ok": False, "error": code}


def _flag(value: Any) -> bool:
    """A boolean argument: JSON true, or "1"/"true" in a query string or form."""
    return value is True or str(value).lower() in ("1", "true")


def _page(body: dict[str, Any], key: str, items: list[dict[str, Any]]) -> tuple[int, str | None, Any]:
    """One page of a list: ``limit`` items from ``cursor`` (an offset here; opaque to clients)."""
    offset = int(body.get("cursor") or 0)
    limit = int(body.get("limit") or 100)
    page = items[offset : offset + limit]
    more = offset + limit < len(items)
    meta = {"next_cursor": str(offset + limit) if more else ""}
    return 200, None, {"ok": True, key: page, "has_more": more, "response_metadata": meta}


def _button(
    blocks: list[dict[str, Any]], action_id: str, *, seed: str
) -> tuple[dict[str, Any], dict[str, Any] | None, list[str]]:
    """The actions block and element with ``action_id``, and every action_id present.

    Blocks without a ``block_id`` get one derived from ``seed`` and their position, as
    Slack gives each block an ID when the message is posted (stable across clicks here).
    """
    found: tuple[dict[str, Any], dict[str, Any] | None] = ({}, None)
    present: list[str] = []
    for index, block in enumerate(blocks):
        block.setdefault("block_id", hashlib.sha1(f"{seed}/{index}".encode()).hexdigest()[:5])
        if block.get("type") != "actions":
            continue
        for element in block.get("elements", []):
            if "action_id" in element:
                present.append(element["action_id"])
            if element.get("action_id") == action_id and found[1] is None:
                found = (block, element)
    return found[0], found[1], present


def _mimetype(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _file_bytes(content_type: str, raw: bytes) -> bytes:
    """The file in an upload body: the body itself, or the file part of a multipart form.

    slack-sdk posts the raw bytes (aiohttp as application/octet-stream, urllib as
    application/x-www-form-urlencoded, though they are not a form); curl -F sends multipart.
    """
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        return raw
    form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    parts = list(form.iter_parts())
    part = next((p for p in parts if p.get_filename() is not None), parts[0] if parts else None)
    content = part.get_payload(decode=True) if part is not None else None
    return content if isinstance(content, bytes) else b""


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if urlsplit(self.path).path.startswith("/upload/"):
            self._upload(raw)  # file bytes, not a form, whatever the Content-Type says
            return
        self._handle("POST", _parse_body(self.headers.get("Content-Type", ""), raw))

    def do_GET(self) -> None:
        self._handle("GET", {})

    def _handle(self, verb: str, body: dict[str, Any]) -> None:
        api: SlackAPIServer = self.server.api  # type: ignore[attr-defined]
        arrived = time.monotonic()
        headers = dict(self.headers.items())
        url = urlsplit(self.path)
        path = url.path
        # slack-sdk sends conversations.* as GET with a query string; arguments may come both ways.
        body = {**_form(url.query), **body}
        text_reply = path.startswith("/webhook/")  # webhooks answer in plain text, response URLs in JSON
        if path.startswith(("/webhook/", "/actions/", "/upload/")) and verb != "POST":
            api._record(Recorded(verb, path, headers, body, 405, "method_not_allowed", arrived))
            self._reply(405, "method_not_allowed")
            return
        failure = api._injected_failure()
        if failure:
            error = _STATUS_ERRORS.get(failure.status, "request_failed")
            api._record(Recorded(verb, path, headers, body, failure.status, error, arrived))
            extra = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
            self._reply(failure.status, error if text_reply else {"ok": False, "error": error}, extra)
            return
        status, error, reply = api._answer(path, headers, body)
        api._record(Recorded(verb, path, headers, body, status, error, arrived))
        self._reply(status, reply)

    def _upload(self, raw: bytes) -> None:
        api: SlackAPIServer = self.server.api  # type: ignore[attr-defined]
        arrived = time.monotonic()
        headers = dict(self.headers.items())
        path = urlsplit(self.path).path
        status, error, reply = api._receive_upload(path, headers.get("Content-Type", ""), raw)
        # The body is recorded by size: the bytes are in server.files() once the upload completes.
        api._record(Recorded("POST", path, headers, {"bytes": len(raw)}, status, error, arrived))
        self._reply(status, reply)

    def _reply(self, status: int, reply: Any, headers: dict[str, str] | None = None) -> None:
        # Slack answers the Web API in JSON, webhooks and upload URLs in plain text.
        is_text = isinstance(reply, str)
        data = reply.encode() if is_text else json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8" if is_text else "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


def _parse_body(content_type: str, raw: bytes) -> dict[str, Any]:
    """A JSON or form-encoded body as a dict; JSON strings in form fields are decoded."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json":
        return json.loads(raw or b"{}")
    return _form(raw.decode())


def _form(query: str) -> dict[str, Any]:
    """A query string or form body as a dict; JSON strings in form fields are decoded."""
    body: dict[str, Any] = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    for name in _JSON_FIELDS:
        if isinstance(body.get(name), str):
            body[name] = json.loads(body[name])
    return body


@pytest.fixture
def slack_api() -> Iterator[SlackAPIServer]:
    """A fresh local Slack API for one test."""
    with SlackAPIServer() as server:
        yield server
