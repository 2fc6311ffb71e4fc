"""Tracker formats: Segment/RudderStack, Snowplow, GA4 and declared mappings, onto the event contract.

A source topic carries one format (``topics.sources`` in kpimon.yaml, docs/formats.md):

- ``kpimon``: the event contract itself (kpi_core/events.py), the default;
- ``segment``, ``snowplow``, ``ga4``: built-in mappings (``PRESETS`` below) of those trackers'
  public formats, which a config may extend (more event names, other fields);
- ``mapping``: a mapping declared in full in the config, for any other tracker.

A mapping says where each contract field is in a message (``fields``: paths, first present
wins, with an optional transform), which field names the event (``name``) and which names
become which event type (``events``); a message may carry an array of events (``each``).
Each event it yields is then checked by the contract's own ``validate``, so the rules are
the same whatever the format; an error names the format and the message's field.

A message the format carries but kpimon has no use for (a Segment ``identify`` call, a
GA4 ``scroll`` event) yields no events: it is skipped, not dead-lettered.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

import orjson

from kpi_core.errors import InvalidEvent
from kpi_core.events import OPTIONAL_FIELDS, TYPE_FIELDS, Event, decode as decode_contract, validate
from kpi_core.events import _string as _contract_string  # the contract's check of a string field

FORMATS = ("kpimon", "segment", "snowplow", "ga4", "mapping")

#: A tracker topic's source offsets are scaled by this, and each event of a message takes
#: offset × FAN_OUT + its place in the message: stage 1 deduplicates by offset. Every tracker
#: format is scaled, with an array of events or not, so a topic's offsets keep their scale when
#: its mapping changes (a kpimon topic, one event per message, is not).
FAN_OUT = 128

#: When no field gives a campaign or a channel (direct traffic), these name it (GA4's own words).
NOT_SET = "(not set)"
DIRECT = "direct"

_ID = {"transform": "string"}

#: The built-in formats, in the shape of a ``format: mapping`` declaration (docs/formats.md).
PRESETS: dict[str, dict[str, Any]] = {
    # The Segment spec, which RudderStack sends unchanged: page/screen calls and named track events.
    "segment": {
        "name": ["event", "type"],  # a track call's event name, else the call type (page, screen, identify, ...)
        "events": {"page": "pageview", "screen": "pageview", "Order Completed": "order",
                   "Lead Generated": "lead", "Signed Up": "lead"},
        "fields": {
            "ts": ["timestamp", "originalTimestamp"],
            "event_id": "messageId",
            "campaign": "context.campaign.name",
            "channel": {"path": "context.campaign.medium", "transform": "channel"},
            "visitor_id": {"path": ["anonymousId", "userId"], **_ID},
            # RudderStack's sessionId is the session's start in ms: unique per device, not across them.
            "session_id": {"path": [["anonymousId", "context.sessionId"], ["userId", "context.sessionId"],
                                    "properties.session_id", "anonymousId", "userId"], **_ID},
            "page": ["properties.path", "context.page.path", "name"],
            "lead_id": {"path": ["properties.lead_id", "userId", "anonymousId"], **_ID},
            "stage": "properties.stage",
            "order_id": {"path": "properties.order_id", **_ID},
            "revenue": ["properties.revenue", "properties.total"],
            "customer_id": {"path": ["userId", "anonymousId"], **_ID},
            "new_customer": "properties.new_customer",
            "device": "context.device.type",
            "country": "context.location.country",
            "utm_source": "context.campaign.source",
            "utm_medium": "context.campaign.medium",
            "utm_campaign": "context.campaign.name",
        },
        "defaults": {"campaign": NOT_SET, "channel": DIRECT, "stage": "lead", "new_customer": False},
    },
    # Snowplow's enriched event as JSON (the analytics SDKs' ``transform``): self-describing
    # events and contexts appear as ``unstruct_event_<vendor>_<name>_<major>`` / ``contexts_...``.
    "snowplow": {
        "name": ["se_category", "event_name"],  # a structured event's category, else the event's name
        "events": {"page_view": "pageview", "transaction": "order", "submit_form": "lead", "lead": "lead",
                   "ad_impression": "impression", "ad_click": "click"},
        "fields": {
            "ts": {"path": ["derived_tstamp", "collector_tstamp"], "transform": "utc"},
            "event_id": "event_id",
            "campaign": ["mkt_campaign",
                         "unstruct_event_com_snowplowanalytics_snowplow_ad_impression_1.campaignId",
                         "unstruct_event_com_snowplowanalytics_snowplow_ad_click_1.campaignId"],
            "channel": {"path": "mkt_medium", "transform": "channel"},
            "visitor_id": "domain_userid",
            "session_id": "domain_sessionid",
            "page": "page_urlpath",
            "new_visitor": {"path": "domain_sessionidx", "equals": 1},
            "lead_id": ["se_label", "event_id"],
            "stage": "se_action",
            "order_id": "tr_orderid",
            "revenue": "tr_total",
            "customer_id": ["user_id", "domain_userid"],
            "new_customer": "contexts_com_kpimon_customer_1[0].new_customer",
            "cost": "unstruct_event_com_snowplowanalytics_snowplow_ad_click_1.cost",
            "device": {"path": "contexts_nl_basjes_yauaa_context_1[0].deviceClass", "transform": "lower"},
            "country": "geo_country",
            "utm_source": "mkt_source",
            "utm_medium": "mkt_medium",
            "utm_campaign": "mkt_campaign",
        },
        "defaults": {"campaign": NOT_SET, "channel": DIRECT, "stage": "lead", "new_customer": False},
    },
    # A GA4 Measurement Protocol request body: a client and an array of named events with params.
    "ga4": {
        "each": "events",
        "name": "name",
        "events": {"page_view": "pageview", "generate_lead": "lead", "purchase": "order"},
        "fields": {
            "ts": {"path": ["timestamp_micros", "$.timestamp_micros"], "transform": "micros"},
            "campaign": ["params.campaign", "params.campaign_id"],
            "channel": {"path": "params.medium", "transform": "channel"},
            "visitor_id": {"path": ["$.client_id", "$.app_instance_id"], **_ID},
            # GA4's session_id is the session's start in seconds: unique per client, not across clients.
            "session_id": {"path": [["$.client_id", "params.session_id"], ["$.app_instance_id", "params.session_id"]], **_ID},
            "page": {"path": ["params.page_location", "params.page_path"], "transform": "url_path"},
            "lead_id": {"path": ["params.lead_id", "$.user_id", "$.client_id", "$.app_instance_id"], **_ID},
            "stage": "params.stage",
            "order_id": {"path": "params.transaction_id", **_ID},
            "revenue": "params.value",
            "customer_id": {"path": ["$.user_id", "$.client_id", "$.app_instance_id"], **_ID},
            "new_customer": "params.new_customer",
            "device": "$.device.category",
            "country": "$.user_location.country_id",
            "utm_source": "params.source",
            "utm_medium": "params.medium",
            "utm_campaign": "params.campaign",
        },
        "defaults": {"campaign": NOT_SET, "channel": DIRECT, "stage": "lead", "new_customer": False},
    },
}

#: utm_medium (or its like) -> kpimon's channel names, after GA4's default channel grouping.
#: A medium not listed is kept as it is (lower-cased); kpimon's own channel names map to themselves.
CHANNELS = {
    "cpc": "paid_search", "ppc": "paid_search", "paidsearch": "paid_search", "paid_search": "paid_search",
    "paid-search": "paid_search", "sem": "paid_search",
    "paid_social": "paid_social", "paidsocial": "paid_social", "paid-social": "paid_social", "social_paid": "paid_social",
    "social": "social", "social-network": "social", "social-media": "social", "sm": "social", "social_network": "social",
    "email": "email", "e-mail": "email", "e_mail": "email", "newsletter": "email",
    "display": "display", "banner": "display", "cpm": "display", "expandable": "display", "interstitial": "display",
    "organic": "organic", "referral": "referral", "affiliate": "affiliate",
    "(none)": DIRECT, "none": DIRECT, "direct": DIRECT,
}


def _number_text(value: Any) -> Any:
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", value):
        return float(value) if "." in value else int(value)
    return value


def _micros(value: Any) -> Any:
    value = _number_text(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return value // 1000 if isinstance(value, int) and not isinstance(value, bool) else value


def _seconds(value: Any) -> Any:
    value = _number_text(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and abs(value) < 1e13:
        return round(value * 1000)
    return value


def _utc(value: Any) -> Any:
    # Snowplow writes UTC without an offset ("2024-03-05 10:00:01.123"); the contract wants one.
    if isinstance(value, str) and value and not re.search(r"(Z|[+-]\d\d:?\d\d)$", value):
        return value.replace(" ", "T") + "Z"
    return value


def _url_path(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return urlsplit(value).path or "/"
    except ValueError:
        return value


def _string(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() else str(value)
    return value


def _number(value: Any) -> Any:
    found = _number_text(value.strip()) if isinstance(value, str) else value
    return float(found) if isinstance(found, int) and not isinstance(found, bool) and isinstance(value, str) else found


def _channel(value: Any) -> Any:
    return CHANNELS.get(value.strip().lower(), value.strip().lower()) if isinstance(value, str) and value.strip() else value


TRANSFORMS: dict[str, Callable[[Any], Any]] = {
    "channel": _channel,  # a utm_medium to a channel: cpc -> paid_search, (none) -> direct, ...
    "url_path": _url_path,  # https://shop.example/pricing?x=1 -> /pricing
    "string": _string,  # 12345 -> "12345" (ids sent as numbers)
    "number": _number,  # "19.90" -> 19.9
    "lower": lambda v: v.lower() if isinstance(v, str) else v,
    "micros": _micros,  # epoch microseconds (GA4's timestamp_micros) -> ms
    "seconds": _seconds,  # epoch seconds -> ms
    "utc": _utc,  # an ISO time without an offset, read as UTC
}

_MISSING = object()
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


_PATH = re.compile(r"^[^.\[\]]+(\[\d+\])*(\.[^.\[\]]+(\[\d+\])*)*$")


def parse_path(text: str) -> tuple[bool, tuple[str | int, ...]]:
    """``a.b[0].c`` as (from the message root?, steps); ``$.`` starts at the root inside ``each``.

    Raises ValueError for a path that is not one.
    """
    root = text.startswith("$.")
    body = text[2:] if root else text
    if not _PATH.match(body):
        raise ValueError(f"{text!r} is not a field path such as context.campaign.name or contexts_x_1[0].id")
    return root, tuple(key if key else int(index) for key, index in _STEP.findall(body))


def _lookup(obj: Any, steps: tuple[str | int, ...]) -> Any:
    for step in steps:
        if isinstance(step, int):
            if not isinstance(obj, list) or step >= len(obj):
                return _MISSING
            obj = obj[step]
        else:
            if not isinstance(obj, dict):
                return _MISSING
            obj = obj.get(step, _MISSING)
        if obj is None or obj is _MISSING:
            return _MISSING  # JSON null counts as absent: Snowplow writes every empty column so
    return obj


#: One place a field may be: the parts (from the message root?, steps, as written) whose values
#: are joined with ":" (one part: the value itself).
Where = tuple[tuple[bool, tuple[str | int, ...], str], ...]


@dataclass(frozen=True, slots=True)
class Rule:
    """Where one field is: places tried in order, then a constant; a transform; or a comparison."""

    places: tuple[Where, ...]
    transform: Callable[[Any], Any] | None = None
    equals: Any = _MISSING
    value: Any = _MISSING

    def get(self, item: Any, root: Any, prefix: str = "") -> tuple[Any, str | None]:
        """(the value or _MISSING, where it came from; when absent, the first missing part of the first place).

        ``prefix`` (``events[2].``) is put before paths read from the item, for messages.
        """
        for place in self.places:
            values = [_lookup(root if from_root else item, steps) for from_root, steps, _ in place]
            if _MISSING in values:
                continue
            if len(values) == 1:
                value = values[0]
            else:
                bad = next((i for i, v in enumerate(values) if isinstance(v, (bool, dict, list))), None)
                if bad is not None:
                    raise InvalidEvent("wrong_type", f"must be a string or a number to join, got {type(values[bad]).__name__}",
                                       _shown((place[bad],), prefix))
                value = ":".join(str(_string(v)) for v in values)
            if self.equals is not _MISSING:
                value = value == self.equals
            elif self.transform is not None:
                try:
                    value = self.transform(value)
                except Exception:  # noqa: BLE001 - odd input to a transform is the message's fault
                    raise InvalidEvent("invalid_value", f"cannot be read ({type(value).__name__})", _shown(place, prefix)) from None
            return value, _shown(place, prefix)
        if not self.places:
            return self.value, None
        first = self.places[0]
        missing = [part for part in first if _lookup(root if part[0] else item, part[1]) is _MISSING] or list(first)
        return self.value, _shown((missing[0],), prefix)


def _shown(place: Where, prefix: str) -> str:
    return " + ".join(text if from_root else prefix + text for from_root, _, text in place)


def compile_rule(spec: Any) -> Rule:
    """A field's declaration as a Rule: a path, a list of places (a place that is itself a list
    of paths joins their values with ":"), or {path, transform, equals, value}."""
    if isinstance(spec, (str, list)):
        spec = {"path": spec}
    paths = spec.get("path")
    paths = [] if paths is None else [paths] if isinstance(paths, str) else list(paths)
    transform = spec.get("transform")
    places = tuple(tuple((*parse_path(p), p.removeprefix("$.")) for p in ([place] if isinstance(place, str) else place))
                   for place in paths)
    return Rule(
        places,
        TRANSFORMS[transform] if transform else None,
        spec["equals"] if spec.get("equals") is not None else _MISSING,
        spec["value"] if spec.get("value") is not None else _MISSING,
    )


def merged(format: str, each: str | None, name: Any, events: dict[str, str], fields: dict[str, Any],
           defaults: dict[str, Any]) -> dict[str, Any]:
    """A source's declaration over its preset: its events, fields and defaults win, one by one."""
    base = PRESETS.get(format, {"events": {}, "fields": {}, "defaults": {}})
    return {
        "each": each if each is not None else base.get("each"),
        "name": name if name is not None else base.get("name"),
        "events": {**base["events"], **events},
        "fields": {**base["fields"], **fields},
        "defaults": {**base["defaults"], **defaults},
    }


#: Contract fields by event type: a mapping fills only these (and attributes) for an event.
_COMMON = ("ts", "event_id", "campaign", "channel")
_CONTRACT = {t: (*_COMMON, *TYPE_FIELDS[t], *OPTIONAL_FIELDS.get(t, {})) for t in TYPE_FIELDS}
_ALL_CONTRACT = frozenset(f for fs in _CONTRACT.values() for f in fs) | {"type"}
CONTRACT_FIELDS = _ALL_CONTRACT - {"type"}  # what a mapping's fields may name, besides attributes
#: Each contract field's check, for defaults (the same check whatever the event type).
_CHECKS = {**{f: c for t in TYPE_FIELDS for f, c in {**TYPE_FIELDS[t], **OPTIONAL_FIELDS.get(t, {})}.items()},
           **{f: _contract_string for f in ("campaign", "channel", "event_id")}}


class Decoder:
    """Turns one Kafka message of a source topic into the contract's events."""

    fan_out = 1  # events one message may carry: offsets are scaled by it (FAN_OUT) when above 1

    def __init__(self, implied: str | None = None) -> None:
        self.format = "kpimon"
        self.implied = implied
        # The event types this topic's messages may become (without an implied type: any).
        self.types = frozenset({implied}) if implied else frozenset(TYPE_FIELDS)

    def decode(self, raw: bytes) -> list[tuple[int, Event]]:
        """One Kafka message's events, each with its place in the message (its offset's index)."""
        return [(0, decode_contract(raw, self.implied))]

    def indexed(self, obj: Any) -> list[tuple[int, Event]]:
        """``decode`` for a message already parsed from JSON (a file's line)."""
        return [(0, validate(obj, self.implied))]

    def events(self, obj: Any) -> list[Event]:
        return [event for _, event in self.indexed(obj)]


class MappingDecoder(Decoder):
    """A declared (or built-in) mapping from a tracker's messages onto the contract."""

    def __init__(self, format: str, spec: dict[str, Any]) -> None:
        super().__init__()
        self.format = format
        self.each = parse_path(spec["each"]) if spec.get("each") else None
        self.each_text = spec.get("each")
        self.fan_out = FAN_OUT
        self.name = compile_rule(spec["name"])
        self.names = dict(spec["events"])  # event name -> event type
        self.types = frozenset(self.names.values())
        self.defaults = dict(spec.get("defaults") or {})
        rules = {f: compile_rule(s) for f, s in spec["fields"].items()}
        attributes = [(f, r) for f, r in rules.items() if f not in _ALL_CONTRACT]
        # Per event type, the rules to apply: its contract fields, then every attribute.
        self.rules = {t: [(f, rules[f]) for f in fields if f in rules] + attributes for t, fields in _CONTRACT.items()}

    def _error(self, reason: str, where: str | None, detail: str) -> InvalidEvent:
        return InvalidEvent(reason, f"{self.format} format, field {where}: {detail}" if where else f"{self.format} format: {detail}", where)

    def decode(self, raw: bytes) -> list[tuple[int, Event]]:
        try:
            root = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise self._error("invalid_json", None, f"not JSON ({str(exc)[:160]})") from None
        return self.indexed(root)

    def indexed(self, root: Any) -> list[tuple[int, Event]]:
        # An event's index is its place in the message, not among the events kept: a mapping
        # that later takes one more name keeps every other event's offset (and its dedup).
        if not isinstance(root, dict):
            raise self._error("not_an_object", None, "a message must be a JSON object")
        if self.each is None:
            event = self._event(root, root, "")
            return [] if event is None else [(0, event)]
        items = _lookup(root, self.each[1])
        if items is _MISSING:
            raise self._error("missing_field", self.each_text, "is required: it holds the message's events")
        if not isinstance(items, list):
            raise self._error("wrong_type", self.each_text, f"must be an array of events, got {type(items).__name__}")
        if len(items) >= FAN_OUT:
            raise self._error("invalid_value", self.each_text, f"holds {len(items)} events; at most {FAN_OUT - 1} per message")
        out = []
        for i, item in enumerate(items):
            event = self._event(item, root, f"{self.each_text}[{i}].")
            if event is not None:
                out.append((i, event))
        return out

    def _event(self, item: Any, root: Any, prefix: str) -> Event | None:
        if not isinstance(item, dict):
            raise self._error("not_an_object", prefix.rstrip(".") or None, "an event must be a JSON object")
        try:
            name, name_path = self.name.get(item, root, prefix)
            if name is _MISSING:
                raise InvalidEvent("missing_field", "is required: it names the event", name_path)
            if not isinstance(name, str):
                raise InvalidEvent("wrong_type", f"must be a string: it names the event, got {type(name).__name__}", name_path)
            etype = self.names.get(name)
            if etype is None:
                return None  # an event kpimon has no use for
            obj: dict[str, Any] = {"type": etype}
            where: dict[str, str | None] = {}
            for field, rule in self.rules[etype]:
                value, where[field] = rule.get(item, root, prefix)
                if value is _MISSING and field in self.defaults:
                    value, where[field] = self.defaults[field], f"defaults.{field}"  # the config's, not the message's
                if value is not _MISSING:
                    obj[field] = value
            for field, value in self.defaults.items():
                if field in _CONTRACT[etype] and field not in obj:
                    obj[field], where[field] = value, f"defaults.{field}"
        except InvalidEvent as exc:
            raise self._error(exc.reason, exc.field, exc.detail) from None
        try:
            return validate(obj)
        except InvalidEvent as exc:
            field = exc.field or ""
            shown = where.get(field) or field or None
            raise self._error(exc.reason, shown, f"{exc.detail} ({name})") from None


def problems(spec: dict[str, Any], attributes: set[str]) -> list[str]:
    """What a merged mapping cannot do, said before any message arrives (config checks).

    Every event type it names needs each required field from a rule or a default; a default
    must pass the contract's own check; a default of a field that is neither the contract's
    nor a declared attribute is a typo.
    """
    out = []
    fields, defaults = spec["fields"], spec["defaults"]
    for etype in sorted(set(spec["events"].values())):
        needed = ["ts", "campaign", "channel", *TYPE_FIELDS[etype]]
        missing = [f for f in needed if f not in fields and f not in defaults]
        if missing:
            out.append(f"events: {etype} events need {', '.join(missing)}: give fields.{missing[0]} (where it is) or defaults.{missing[0]}")
    for name, value in defaults.items():
        if name not in CONTRACT_FIELDS:
            if name not in attributes:
                out.append(f"defaults.{name}: not a field of kpimon's events nor a declared attribute")
            elif not isinstance(value, str):
                out.append(f"defaults.{name}: an attribute's default must be a string")
            continue
        check = _CHECKS.get(name)
        try:
            if name == "ts":
                raise InvalidEvent("invalid_value", "ts has no default: every event carries its own time")
            if check is not None:
                check(name, value)
        except InvalidEvent as exc:
            out.append(f"defaults.{name}: {exc.detail}")
    return out


def decoder(format: str, implied: str | None = None, spec: dict[str, Any] | None = None) -> Decoder:
    """The decoder of one source topic (``spec``: the merged mapping of a tracker format)."""
    if format == "kpimon":
        return Decoder(implied)
    return MappingDecoder(format, spec if spec is not None else merged(format, None, None, {}, {}, {}))


def detect(obj: Any) -> str | None:
    """Which format one decoded message looks like (``kpimon init``, ``replay``), or None."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("events"), list) and ("client_id" in obj or "app_instance_id" in obj):
        return "ga4"
    if obj.get("type") in TYPE_FIELDS and "ts" in obj:
        return "kpimon"
    if obj.get("type") in ("track", "page", "screen", "identify", "group", "alias") and (
            "messageId" in obj or "anonymousId" in obj or "userId" in obj):
        return "segment"
    if "event_id" in obj and ("collector_tstamp" in obj or "derived_tstamp" in obj or "event_name" in obj):
        return "snowplow"
    return None
