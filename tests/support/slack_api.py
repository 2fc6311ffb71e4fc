"""A real Slack Web API and incoming webhook on localhost, for tests.

It answers ``chat.postMessage``, ``chat.update`` and ``POST /webhook/...`` the way
Slack does, records every request, and fails on demand so retries can be counted::

    slack_api.fail_next(1, status=429, retry_after=1)
    slack_api.outage(2.0, statuses=[503, 429])

Use the ``slack_api`` fixture, or ``with SlackAPIServer() as server:``.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

DEFAULT_TOKEN = "xoxb-test-0000-kpimon"

# The error code Slack puts in the body of each failure status.
_STATUS_ERRORS = {429: "ratelimited", 500: "internal_error", 502: "bad_gateway", 503: "service_unavailable"}
_JSON_FIELDS = ("blocks", "attachments", "metadata")  # form bodies carry these as JSON strings


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
        self._posted: set[tuple[str, str]] = set()  # (channel, ts) of accepted messages
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

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Bodies of accepted ``chat.postMessage`` calls."""
        return [r.body for r in self.requests if r.path == "/api/chat.postMessage"]

    @property
    def webhook_messages(self) -> list[dict[str, Any]]:
        """Bodies of accepted incoming-webhook posts."""
        return [r.body for r in self.requests if r.path.startswith("/webhook/")]

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
        if method not in ("chat.postMessage", "chat.update"):
            return 404, "unknown_method", {"ok": False, "error": "unknown_method"}
        auth = headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else body.get("token")
        if not token:
            return 200, "not_authed", {"ok": False, "error": "not_authed"}
        if token != self.token:
            return 200, "invalid_auth", {"ok": False, "error": "invalid_auth"}
        channel = body.get("channel")
        if not channel:
            return 200, "channel_not_found", {"ok": False, "error": "channel_not_found"}
        if not body.get("text") and not body.get("blocks"):
            return 200, "no_text", {"ok": False, "error": "no_text"}
        with self._lock:
            if method == "chat.update":
                ts = body.get("ts", "")
                if (channel, ts) not in self._posted:
                    return 200, "message_not_found", {"ok": False, "error": "message_not_found"}
            else:
                ts = f"1700000000.{next(self._ts):06d}"
                self._posted.add((channel, ts))
        message = {"type": "message", "bot_id": "B0KPIMON", "ts": ts, "text": body.get("text", "")}
        if "blocks" in body:
            message["blocks"] = body["blocks"]
        return 200, None, {"ok": True, "channel": channel, "ts": ts, "message": message}


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_POST(self) -> None:
        api: SlackAPIServer = self.server.api  # type: ignore[attr-defined]
        arrived = time.monotonic()
        headers = dict(self.headers.items())
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = _parse_body(self.headers.get("Content-Type", ""), raw)
        webhook = self.path.startswith("/webhook/")
        failure = api._injected_failure()
        if failure:
            error = _STATUS_ERRORS.get(failure.status, "request_failed")
            api._record(Recorded("POST", self.path, headers, body, failure.status, error, arrived))
            extra = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
            self._reply(failure.status, error if webhook else {"ok": False, "error": error}, extra)
            return
        status, error, reply = api._answer(self.path, headers, body)
        api._record(Recorded("POST", self.path, headers, body, status, error, arrived))
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
    body: dict[str, Any] = {k: v[0] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
    for name in _JSON_FIELDS:
        if isinstance(body.get(name), str):
            body[name] = json.loads(body[name])
    return body


@pytest.fixture
def slack_api() -> Iterator[SlackAPIServer]:
    """A fresh local Slack API for one test."""
    with SlackAPIServer() as server:
        yield server
