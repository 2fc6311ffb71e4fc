"""Event contract v1 (see docs/events.md): decoding and validation.

Validation is hand-written rather than a pydantic model per event because it
runs once per Kafka message on the hot path; the rules live in the tables below
so the contract is still declared in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import orjson

from kpi_core.errors import InvalidEvent

#: Every reason an event can be rejected for. Bounded, so it is a safe metric label.
REASONS = (
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "unknown_type",
    "type_mismatch",
    "bad_timestamp",
)

#: Event time must fall in this range (epoch ms). Outside it is a producer bug,
#: and letting it through would drag the watermark decades forward or back.
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z

MAX_STR_LEN = 256
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # campaign names, channels, ids and attributes

COMMON_FIELDS = ("type", "ts", "event_id", "campaign", "channel")


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", f"{name} must be a string, got {type(value).__name__}")
    if not value or len(value) > MAX_STR_LEN:
        raise InvalidEvent("invalid_value", f"{name} must be 1..{MAX_STR_LEN} characters")
    return value


def _amount(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent("wrong_type", f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or value > 1e12:
        raise InvalidEvent("invalid_value", f"{name} must be a finite number in [0, 1e12]")
    return value


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidEvent("wrong_type", f"{name} must be true or false")
    return value


def _stage(name: str, value: Any) -> str:
    value = _string(name, value)
    if value not in ("lead", "mql", "sql"):
        raise InvalidEvent("invalid_value", f"{name} must be one of lead, mql, sql")
    return value


def _score(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10:
        raise InvalidEvent("invalid_value", f"{name} must be an integer from 0 to 10")
    return value


Check = Callable[[str, Any], Any]

#: Per-type required fields and how each is checked.
TYPE_FIELDS: dict[str, dict[str, Check]] = {
    "impression": {},
    "click": {"cost": _amount},
    "pageview": {"visitor_id": _string, "session_id": _string, "page": _string},
    "lead": {"lead_id": _string, "stage": _stage},
    "order": {"order_id": _string, "revenue": _amount, "customer_id": _string, "new_customer": _boolean},
    "spend": {"amount": _amount},
    "survey": {"score": _score},
}

def _version(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise InvalidEvent("invalid_value", f"{name} must be a non-negative integer")
    return value


#: Per-type optional fields, checked when present.
OPTIONAL_FIELDS: dict[str, dict[str, Check]] = {
    "pageview": {"new_visitor": _boolean},  # set by trackers that know the visitor is new
    "spend": {"report_version": _version},  # restated reports: the higher version wins
}

#: Optional numeric fields, per type (restatement versions may name them).
OPTIONAL_NUMBERS: dict[str, tuple[str, ...]] = {"spend": ("report_version",)}


#: Fields every event type carries, for config checks of filters and breakdowns.
ALWAYS_PRESENT = frozenset({"type", "campaign", "channel"})

#: The virtual ``session`` records built from page views (see kpi_core.sessions).
SESSION_FIELDS = frozenset(
    {"campaign", "channel", "visitor_id", "session_id", "page", "bounced", "pageviews", "duration_s", "new_visitor"}
)

EVENT_TYPES = tuple(TYPE_FIELDS)


@dataclass(slots=True)
class Event:
    """A validated event: its type, event time in epoch milliseconds, and its fields."""

    type: str
    ts: int
    data: dict[str, Any]  # campaign, channel, per-type fields and extra string attributes


def parse_ts(value: Any) -> int:
    """Event time as epoch milliseconds, from epoch ms or ISO-8601 with an offset."""
    if isinstance(value, bool):
        raise InvalidEvent("bad_timestamp", "ts must be epoch milliseconds or ISO-8601 with an offset")
    if isinstance(value, int):
        ts = value
    elif isinstance(value, float) and math.isfinite(value):
        ts = int(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
        except ValueError:
            raise InvalidEvent("bad_timestamp", "ts is not ISO-8601") from None
        if parsed.tzinfo is None:
            raise InvalidEvent("bad_timestamp", "ts must carry a UTC offset, e.g. 2024-05-01T12:00:00+00:00")
        ts = (parsed - _EPOCH) // timedelta(milliseconds=1)  # exact: float timestamps lose a millisecond
    else:
        raise InvalidEvent("bad_timestamp", "ts must be epoch milliseconds or ISO-8601 with an offset")
    if not MIN_TS_MS <= ts < MAX_TS_MS:
        raise InvalidEvent("bad_timestamp", "ts must fall between 2000-01-01 and 2100-01-01")
    return ts


def validate(obj: Any, implied_type: str | None = None) -> Event:
    """Check a decoded JSON value against the contract and return the Event.

    Valid events take ``_valid``, a straight-line check of the same rules that builds the
    same Event (a fifth of the time per event on the router's hot path); anything it does
    not accept goes through ``_checked``, which finds and names the problem.
    """
    event = _valid(obj, implied_type)
    return event if event is not None else _checked(obj, implied_type)


def _is_string(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_STR_LEN


def _fast_amount(value: Any) -> float | None:
    if type(value) is not int and type(value) is not float:
        return None
    value = float(value)
    return value if 0 <= value <= 1e12 else None  # NaN and infinities fail the comparison


#: Per type: (field, kind) for the fields of TYPE_FIELDS and OPTIONAL_FIELDS, in their order.
_KIND = {_string: "str", _amount: "amount", _boolean: "bool", _stage: "stage", _score: "score", _version: "version"}
_REQUIRED = {t: tuple((n, _KIND[c]) for n, c in fields.items()) for t, fields in TYPE_FIELDS.items()}
_OPTIONAL = {t: tuple((n, _KIND[c]) for n, c in OPTIONAL_FIELDS.get(t, {}).items()) for t in TYPE_FIELDS}
_MISSING = object()


def _fast_value(kind: str, value: Any) -> Any:
    """The checked value, or _MISSING when ``_checked`` must look (and name the problem)."""
    if kind == "str":
        return value if _is_string(value) else _MISSING
    if kind == "amount":
        amount = _fast_amount(value)
        return _MISSING if amount is None else amount
    if kind == "bool":
        return value if type(value) is bool else _MISSING
    if kind == "stage":
        return value if value in ("lead", "mql", "sql") and type(value) is str else _MISSING
    if kind == "score":
        return value if type(value) is int and 0 <= value <= 10 else _MISSING
    return value if type(value) is int and 0 <= value < 2**53 else _MISSING  # version


def _valid(obj: Any, implied_type: str | None) -> Event | None:
    """The Event for a valid event with an integer ``ts``; None for anything else."""
    if type(obj) is not dict:
        return None
    etype = obj.get("type", implied_type)
    if type(etype) is not str:
        return None
    required = _REQUIRED.get(etype)
    if required is None or (implied_type is not None and etype != implied_type):
        return None
    ts = obj.get("ts")
    if type(ts) is not int or not MIN_TS_MS <= ts < MAX_TS_MS:
        return None
    campaign, channel = obj.get("campaign"), obj.get("channel")
    if not _is_string(campaign) or not _is_string(channel):
        return None
    data: dict[str, Any] = {"campaign": campaign, "channel": channel}
    for name, kind in required:
        value = _fast_value(kind, obj.get(name, _MISSING))
        if value is _MISSING:
            return None
        data[name] = value
    for name, kind in _OPTIONAL[etype]:
        if name in obj:
            value = _fast_value(kind, obj[name])
            if value is _MISSING:
                return None
            data[name] = value
    if "event_id" in obj:
        if not _is_string(obj["event_id"]):
            return None
        data["event_id"] = obj["event_id"]
    for name, value in obj.items():
        if type(value) is str and name not in data and name not in COMMON_FIELDS:
            if len(name) > MAX_STR_LEN or len(value) > MAX_STR_LEN:
                return None
            data[name] = value
    return Event(etype, ts, data)


def _checked(obj: Any, implied_type: str | None = None) -> Event:
    """``validate`` one rule at a time, raising InvalidEvent naming the first problem."""
    if not isinstance(obj, dict):
        raise InvalidEvent("not_an_object", "an event must be a JSON object")
    etype = obj.get("type", implied_type)
    if etype is None:
        raise InvalidEvent("missing_field", "type is required on this topic", "type")
    if not isinstance(etype, str) or etype not in TYPE_FIELDS:
        # Never str() arbitrary JSON here: a deeply nested value would blow the stack.
        shown = repr(etype[:40]) if isinstance(etype, str) else f"a {type(etype).__name__}"
        raise InvalidEvent("unknown_type", f"unknown event type {shown}", "type")
    if implied_type is not None and etype != implied_type:
        raise InvalidEvent("type_mismatch", f"a {etype} event on a topic that carries {implied_type} events", "type")
    if "ts" not in obj:
        raise InvalidEvent("missing_field", "ts is required", "ts")
    ts = _field("ts", lambda _, v: parse_ts(v), obj["ts"])
    data: dict[str, Any] = {}
    for name in ("campaign", "channel"):
        if name not in obj:
            raise InvalidEvent("missing_field", f"{name} is required", name)
        data[name] = _field(name, _string, obj[name])
    for name, check in TYPE_FIELDS[etype].items():
        if name not in obj:
            raise InvalidEvent("missing_field", f"{name} is required on {etype} events", name)
        data[name] = _field(name, check, obj[name])
    for name, check in OPTIONAL_FIELDS.get(etype, {}).items():
        if name in obj:
            data[name] = _field(name, check, obj[name])
    if "event_id" in obj:
        data["event_id"] = _field("event_id", _string, obj["event_id"])
    for name, value in obj.items():
        # Extra string attributes are kept for breakdowns; other extras are ignored.
        if name not in data and name not in COMMON_FIELDS and isinstance(value, str):
            if len(name) > MAX_STR_LEN or len(value) > MAX_STR_LEN:
                raise InvalidEvent("invalid_value", f"attribute names and values must be at most {MAX_STR_LEN} characters", name[:40])
            data[name] = value
    return Event(etype, ts, data)


def _field(name: str, check: Check, value: Any) -> Any:
    """``check(name, value)``, with the field named on the error (a tracker format maps it to its own)."""
    try:
        return check(name, value)
    except InvalidEvent as exc:
        exc.field = name
        raise


#: A message with this header is a progress marker, not an event: its producer promises that
#: no event older than the header's value (epoch ms, decimal) will follow on that partition.
MARKER_HEADER = "kpimon-watermark"


def marker(headers: Any) -> int | None:
    """The promised event time of a progress marker, None for an ordinary message; InvalidEvent if malformed."""
    for key, value in headers or ():
        if key == MARKER_HEADER:
            text = (value or b"").decode("ascii", "replace").strip()
            if not text.isdigit() or not MIN_TS_MS <= int(text) < MAX_TS_MS:
                raise InvalidEvent("bad_timestamp", f"the {MARKER_HEADER} header must be epoch milliseconds between 2000 and 2100")
            return int(text)
    return None


def decode(raw: bytes, implied_type: str | None = None) -> Event:
    """Decode one Kafka message value into an Event, or raise InvalidEvent."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("invalid_json", str(exc)[:200]) from None
    return validate(obj, implied_type)


def to_json(event: Event) -> dict[str, Any]:
    """The event back as a contract-conformant JSON object (ts as epoch ms)."""
    return {"type": event.type, "ts": event.ts, **event.data}
