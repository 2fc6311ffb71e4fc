"""A real Slack Web API and incoming webhook on localhost, for tests.

It answers ``chat.postMessage`` (with ``thread_ts`` and ``metadata``), ``chat.update``,
``conversations.history``, ``conversations.replies``, ``conversations.list`` and
``POST /webhook/...`` the way Slack does, keeps the messages (with their replies and
edits), records every request, and fails on demand so retries can be counted::

    slack_api.fail_next(1, status=429, retry_after=1)
    slack_api.outage(2.0, statuses=[503, 429])
    slack_api.channel_messages("#kpi-alerts")[0].replies

Like Slack, channels have IDs: ``chat.*`` accept a ``#name`` and answer with the ID,
``conversations.history`` and ``conversations.replies`` want the ID
(``channel_not_found`` otherwise). Web API calls may come as GET (query string) or
POST (JSON or form body).

Use the ``slack_api`` fixture, or ``with SlackAPIServer() as server:``.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

DEFAULT_TOKEN = "xoxb-test-0000-kpimon"

# The error code Slack puts in the body of each failure status.
_STATUS_ERRORS = {429: "ratelimited", 500: "internal_error", 502: "bad_gateway", 503: "service_unavailable"}
_JSON_FIELDS = ("blocks", "attachments", "metadata")  # form bodies carry these as JSON strings
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]+")
_METHODS = ("chat.postMessage", "chat.update", "conversations.history", "conversations.replies", "conversations.list")


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
class _Failure:
    status: int
    retry_after: int | None


class SlackAPIServer:
    """A local Slack API in a background thread; every request is recorded, failures on demand."""

    def __init__(self, *, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self._lock = threading.Lock()
        self._accepted: list[Recorded] = []
        self._failed: list[Recorded] = []
        self._queued: list[_Failure] = []
        self._outage_until = 0.0
        self._outage: Iterator[_Failure] = iter(())
        self._channels: dict[str, str] = {}  # name (without #) -> ID
        self._messages: dict[str, list[Message]] = {}  # channel ID -> top-level messages, oldest first
        self._ts = itertools.count(100)
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._http.daemon_threads = True
        self._http.api = self  # type: ignore[attr-defined]  # how handlers find this server
        # A short poll interval keeps shutdown, and so each test's teardown, quick.
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.01,), name="slack-api", daemon=True)

    def __enter__(self) -> SlackAPIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
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
        """Accepted requests, in arrival order."""
        with self._lock:
            return list(self._accepted)

    @property
    def failures(self) -> list[Recorded]:
        """Requests that were refused: injected failures, bad tokens, bad arguments."""
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

    def fail_next(self, n: int, *, status: int = 503, retry_after: int | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` (and a Retry-After header if given)."""
        with self._lock:
            self._queued += [_Failure(status, retry_after)] * n

    def outage(self, seconds: float, *, statuses: Sequence[int] = (503, 429), retry_after: int = 1) -> None:
        """Fail every request for ``seconds``, cycling through ``statuses``; 429s carry Retry-After."""
        failures = [_Failure(s, retry_after if s == 429 else None) for s in statuses]
        with self._lock:
            self._outage_until = time.monotonic() + seconds
            self._outage = itertools.cycle(failures)

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
        method = path.removeprefix("/api/")
        if method not in _METHODS:
            return _error("unknown_method", status=404)
        auth = headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else body.get("token")
        if not token:
            return _error("not_authed")
        if token != self.token:
            return _error("invalid_auth")
        if method == "conversations.list":
            with self._lock:
                channels = [{"id": cid, "name": name, "is_channel": True} for name, cid in self._channels.items()]
            return _page(body, "channels", channels)
        if not body.get("channel"):
            return _error("channel_not_found")
        with self._lock:
            if method == "chat.postMessage":
                return self._post(body)
            if method == "chat.update":
                return self._update(body)
            # Like Slack, conversations.* want the channel's ID, not its name.
            channel = body["channel"] if body["channel"] in self._messages else None
            if channel is None:
                return _error("channel_not_found")
            with_metadata = _flag(body.get("include_all_metadata"))
            if method == "conversations.history":
                return self._history(channel, body, with_metadata)
            return self._replies(channel, body, with_metadata)

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
            parent = self._find(channel, str(body["thread_ts"]))
            if parent is None:
                return _error("thread_not_found")
            if parent.thread_ts:  # a reply to a reply goes to the thread's parent
                parent = self._find(channel, parent.thread_ts)
                assert parent is not None
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
        parent = self._find(channel, str(body.get("ts", "")))
        if parent is None:
            return _error("thread_not_found")
        if parent.thread_ts:
            parent = self._find(channel, parent.thread_ts)
            assert parent is not None
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


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
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
        webhook = path.startswith("/webhook/")
        if webhook and verb != "POST":
            api._record(Recorded(verb, path, headers, body, 405, "method_not_allowed", arrived))
            self._reply(405, "method_not_allowed")
            return
        failure = api._injected_failure()
        if failure:
            error = _STATUS_ERRORS.get(failure.status, "request_failed")
            api._record(Recorded(verb, path, headers, body, failure.status, error, arrived))
            extra = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
            self._reply(failure.status, error if webhook else {"ok": False, "error": error}, extra)
            return
        status, error, reply = api._answer(path, headers, body)
        api._record(Recorded(verb, path, headers, body, status, error, arrived))
        self._reply(status, reply)

    def _reply(self, status: int, reply: Any, headers: dict[str, str] | None = None) -> None:
        # Slack answers the Web API in JSON and webhooks in plain text.
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
