"""Tracker formats onto the contract (kpi_core/formats.py, docs/formats.md)."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
import yaml

from kpi_core import config as config_mod, formats
from kpi_core.errors import ConfigError, InvalidEvent

DOC = Path(__file__).resolve().parents[2] / "docs" / "formats.md"
T0 = 1709632800000  # 2024-03-05T10:00:00Z


def decode(fmt: str, msg: dict, spec: dict | None = None) -> list:
    return [event for _, event in formats.decoder(fmt, spec=spec).decode(orjson.dumps(msg))]


def error(fmt: str, msg: dict | bytes, spec: dict | None = None) -> InvalidEvent:
    raw = msg if isinstance(msg, bytes) else orjson.dumps(msg)
    with pytest.raises(InvalidEvent) as exc:
        formats.decoder(fmt, spec=spec).decode(raw)
    return exc.value


SEG_ORDER = {
    "type": "track", "event": "Order Completed", "messageId": "m-1", "anonymousId": "a-1", "userId": "u-1",
    "timestamp": "2024-03-05T10:00:00.250Z",
    "context": {"campaign": {"name": "spring", "medium": "cpc", "source": "google"},
                "device": {"type": "mobile"}, "location": {"country": "DE"}},
    "properties": {"order_id": "o-1", "revenue": 49.9, "total": 55.0, "new_customer": True},
}


def test_segment_order_maps_field_by_field():
    (ev,) = decode("segment", SEG_ORDER)
    assert (ev.type, ev.ts) == ("order", T0 + 250)
    assert ev.data == {"campaign": "spring", "channel": "paid_search", "order_id": "o-1", "revenue": 49.9,
                       "customer_id": "u-1", "new_customer": True, "event_id": "m-1", "device": "mobile",
                       "country": "DE", "utm_source": "google", "utm_medium": "cpc", "utm_campaign": "spring"}


def test_segment_page_with_rudderstack_session_and_no_campaign():
    msg = {"type": "page", "anonymousId": "a-9", "messageId": "m-2", "originalTimestamp": "2024-03-05T10:00:01Z",
           "context": {"sessionId": 1709632790123, "page": {"path": "/pricing"}}, "properties": {"title": "Pricing"}}
    (ev,) = decode("segment", msg)
    assert ev.type == "pageview" and ev.ts == T0 + 1000
    # RudderStack's sessionId is a start time in ms: unique per device only, so the device's id leads.
    assert ev.data["session_id"] == "a-9:1709632790123" and ev.data["page"] == "/pricing"
    assert (ev.data["campaign"], ev.data["channel"], ev.data["visitor_id"]) == ("(not set)", "direct", "a-9")


def test_messages_without_kpimon_events_are_skipped_not_errors():
    assert decode("segment", {"type": "identify", "userId": "u", "traits": {"email": "x@y.z"}}) == []
    assert decode("segment", {**SEG_ORDER, "event": "Product Viewed"}) == []
    assert decode("snowplow", {"event_id": "e", "event_name": "page_ping", "collector_tstamp": "2024-03-05 10:00:00"}) == []
    assert decode("ga4", {"client_id": "c", "events": [{"name": "scroll"}]}) == []


def test_snowplow_page_view_lead_and_ad_click():
    base = {"app_id": "shop", "platform": "web", "event_id": "e-1", "collector_tstamp": "2024-03-05 10:00:05.000",
            "derived_tstamp": "2024-03-05 10:00:04.500", "domain_userid": "d-1", "domain_sessionid": "s-1",
            "domain_sessionidx": 1, "mkt_campaign": "spring", "mkt_medium": "email", "geo_country": "FR",
            "se_category": None, "user_id": None, "tr_total": None}
    (pv,) = decode("snowplow", {**base, "event": "page_view", "event_name": "page_view", "page_urlpath": "/"})
    assert (pv.type, pv.ts) == ("pageview", T0 + 4500)
    assert pv.data["new_visitor"] is True and pv.data["channel"] == "email" and pv.data["country"] == "FR"
    (lead,) = decode("snowplow", {**base, "event": "struct", "event_name": "event", "se_category": "lead",
                                  "se_action": "mql", "se_label": "lead-7"})
    assert (lead.type, lead.data["stage"], lead.data["lead_id"]) == ("lead", "mql", "lead-7")
    click = {**base, "mkt_campaign": None, "event": "unstruct", "event_name": "ad_click",
             "unstruct_event_com_snowplowanalytics_snowplow_ad_click_1": {"clickId": "c1", "campaignId": "cmp-9", "cost": 0.75, "costModel": "cpc"}}
    (ev,) = decode("snowplow", click)
    assert (ev.type, ev.data["campaign"], ev.data["cost"]) == ("click", "cmp-9", 0.75)


def test_ga4_message_carries_several_events_and_reads_message_fields():
    msg = {"client_id": "123.456", "user_id": "u-3", "timestamp_micros": "1709632800000000",
           "device": {"category": "tablet"}, "user_location": {"country_id": "BR"},
           "events": [
               {"name": "page_view", "params": {"session_id": 1709632700, "page_location": "https://shop.example/offers?x=1",
                                                "campaign": "spring", "medium": "social"}},
               {"name": "user_engagement", "params": {"engagement_time_msec": 10}},
               {"name": "purchase", "timestamp_micros": 1709632802000000,
                "params": {"transaction_id": "T-1", "value": 30.5, "currency": "USD", "campaign": "spring", "medium": "social"}},
           ]}
    pv, order = decode("ga4", msg)
    assert (pv.type, pv.ts, order.type, order.ts) == ("pageview", T0, "order", T0 + 2000)
    assert pv.data["page"] == "/offers" and pv.data["session_id"] == "123.456:1709632700" and pv.data["visitor_id"] == "123.456"
    assert (order.data["customer_id"], order.data["revenue"], order.data["new_customer"]) == ("u-3", 30.5, False)
    assert order.data["device"] == "tablet" and order.data["country"] == "BR"
    assert [i for i, _ in formats.decoder("ga4").decode(orjson.dumps(msg))] == [0, 2]  # places in the message
    assert formats.decoder("ga4").fan_out == formats.decoder("segment").fan_out == formats.FAN_OUT
    assert formats.decoder("kpimon", "click").fan_out == 1


@pytest.mark.parametrize("fmt, msg, reason, field", [
    ("segment", {**SEG_ORDER, "properties": {**SEG_ORDER["properties"], "revenue": "49.90"}}, "wrong_type", "properties.revenue"),
    ("segment", {k: v for k, v in SEG_ORDER.items() if k != "timestamp"}, "missing_field", "timestamp"),
    ("segment", {"anonymousId": "a"}, "missing_field", "event"),
    ("snowplow", {"event_id": "e", "event_name": "page_view", "derived_tstamp": "2024-03-05 10:00:00",
                  "domain_userid": "d", "domain_sessionid": None, "page_urlpath": "/"}, "missing_field", "domain_sessionid"),
    ("snowplow", {"event_id": "e", "event_name": "transaction", "derived_tstamp": "yesterday",
                  "tr_orderid": "o", "tr_total": 5, "domain_userid": "d"}, "bad_timestamp", "derived_tstamp"),
    ("ga4", {"client_id": "c", "events": {"name": "page_view"}}, "wrong_type", "events"),
    ("ga4", {"client_id": "c", "timestamp_micros": 1709632800000000,
             "events": [{"name": "scroll"}, {"name": "purchase", "params": {"transaction_id": "T", "value": -1}}]},
     "invalid_value", "events[1].params.value"),
    ("ga4", {"client_id": "c", "events": [{"name": "page_view", "params": {"session_id": "s"}}]}, "missing_field", "events[0].timestamp_micros"),
])
def test_a_broken_message_names_its_format_and_field(fmt, msg, reason, field):
    exc = error(fmt, msg)
    assert exc.reason == reason
    assert exc.field == field
    assert exc.detail.startswith(f"{fmt} format, field {field}: ")


def test_ga4_sessions_of_two_clients_starting_in_the_same_second_stay_apart():
    def view(client: str) -> str:
        msg = {"client_id": client, "timestamp_micros": 1709632800000000,
               "events": [{"name": "page_view", "params": {"session_id": 1709632800, "page_location": "https://x.example/"}}]}
        return decode("ga4", msg)[0].data["session_id"]

    assert view("111.1") != view("222.2")
    exc = error("ga4", {"client_id": "c", "timestamp_micros": 1709632800000000, "events": [{"name": "page_view", "params": {}}]})
    assert (exc.reason, exc.field) == ("missing_field", "events[0].params.session_id")


PAGE = {"name": "page_view", "params": {"session_id": 7, "page_location": "https://x.example/"}}


@pytest.mark.parametrize("msg, reason, field", [
    ({"client_id": "c", "timestamp_micros": "²", "events": [PAGE]}, "bad_timestamp", "timestamp_micros"),  # the message's
    ({"client_id": "c", "events": [{**PAGE, "timestamp_micros": 1e306}]}, "bad_timestamp", "events[0].timestamp_micros"),
    ({"client_id": {"a": 1}, "timestamp_micros": 1709632800000000, "events": [PAGE]}, "wrong_type", "client_id"),
    ({"client_id": [[[[]]]] * 3, "timestamp_micros": 1709632800000000, "events": [PAGE]}, "wrong_type", "client_id"),
    ({"client_id": "c", "timestamp_micros": 1709632800000000, "events": [{"name": {"x": 1}}]}, "wrong_type", "events[0].name"),
])
def test_odd_values_are_refused_naming_the_field_never_crashing(msg, reason, field):
    exc = error("ga4", msg)
    assert (exc.reason, exc.field) == (reason, field)


def test_odd_but_valid_values_are_read():
    (ev,) = decode("ga4", {"client_id": "c", "timestamp_micros": 1709632800000000.0, "events": [PAGE]})
    assert ev.ts == T0  # an integral float of microseconds
    spec = formats.merged("mapping", None, "kind", {"buy": "order"}, {"ts": {"path": "at", "transform": "seconds"},
                          "order_id": "id", "revenue": {"path": "total", "transform": "number"}, "customer_id": "who"},
                          {"campaign": "(not set)", "channel": "direct", "new_customer": "no"})
    exc = error("mapping", {"kind": "buy", "at": "1709632800.5", "id": "o", "total": "9.90", "who": "v"}, spec)
    # A bad default is the config's fault, and the error says so.
    assert (exc.reason, exc.field) == ("wrong_type", "defaults.new_customer")


def test_not_json_and_too_many_events():
    assert error("segment", b"{nope").detail.startswith("segment format: not JSON")
    exc = error("ga4", {"client_id": "c", "events": [{"name": "scroll"}] * formats.FAN_OUT})
    assert (exc.reason, exc.field) == ("invalid_value", "events")


def _doc_yaml(marker: str) -> dict:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    return yaml.safe_load(next(b for b in blocks if marker in b))


def test_the_documented_in_house_mapping_decodes_the_documented_message():
    sources = _doc_yaml("format: mapping\n      name: kind")["topics"]["sources"]
    cfg = config_mod.from_dict({"measures": {"orders": {"event": "order"}}, "kpis": {"orders": {"measure": "orders"}},
                                "topics": {"sources": sources}})
    text = DOC.read_text()
    msg = orjson.loads(re.search(r"sends\n`(\{.*?\})`", text).group(1))
    source = cfg.topics.sources["shop-events"]
    (ev,) = formats.decoder(source.format, spec=source.mapping()).events(msg)
    assert (ev.type, ev.ts) == ("order", 1709632800500)
    assert ev.data == {"campaign": "spring", "channel": "paid_search", "order_id": "1001", "revenue": 49.9,
                       "customer_id": "v1", "new_customer": True}


def test_a_preset_is_extended_entry_by_entry():
    sources = _doc_yaml('"Demo Requested": lead')["topics"]["sources"]
    cfg = config_mod.from_dict({"measures": {"clicks": {"event": "click"}}, "kpis": {"clicks": {"measure": "clicks"}},
                                "topics": {"sources": sources}})
    spec = cfg.topics.sources["rudderstack"].mapping()
    assert spec["events"]["Order Completed"] == "order" and spec["events"]["Ad Clicked"] == "click"
    msg = {"type": "track", "event": "Ad Clicked", "messageId": "m", "anonymousId": "a", "timestamp": "2024-03-05T10:00:00Z",
           "context": {"campaign": {"name": "spring", "medium": "cpc"}}, "properties": {"cost": 1.25}}
    (ev,) = formats.decoder("segment", spec=spec).events(msg)
    assert (ev.type, ev.data["cost"], ev.data["channel"]) == ("click", 1.25, "paid_search")


def _problems(sources: dict, **extra) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as exc:
        config_mod.from_dict({"measures": {"orders": {"event": "order"}}, "kpis": {"orders": {"measure": "orders"}},
                              "topics": {"sources": sources}, **extra})
    return exc.value.problems


def test_config_names_the_bad_field_of_a_source():
    (path, msg), = _problems({"t": {"format": "mapping", "name": "kind", "events": {"buy": "order"},
                                    "fields": {"ts": {"path": "at", "transform": "hours"}}}})
    assert path.startswith("topics.sources.t.fields.ts.transform")
    (path, msg), = _problems({"t": {"format": "mapping", "name": "kind", "events": {"buy": "order"}, "fields": {}}})
    assert path == "topics.sources.t" and "fields.ts" in msg
    (path, msg), = _problems({"t": {"format": "segment", "events": {"Bought": "purchase"}}})
    assert path == "topics.sources.t" and "events.Bought" in msg and "purchase" in msg
    (path, msg), = _problems({"t": {"type": "click", "fields": {"ts": "at"}}})
    assert "kpimon format takes only type" in msg
    (path, msg), = _problems({"t": "clicks"})
    assert "unknown event type 'clicks'" in msg and "segment" in msg
    (path, msg), = _problems({"t": {"format": "ga4", "fields": {"campaign": "params..x"}}})
    assert path.startswith("topics.sources.t.fields.campaign") and "not a field path" in msg
    (path, msg), = _problems({"t": {"format": "segment", "fields": {"revnue": "properties.rev"}}})
    assert path == "topics.sources.t.fields.revnue" and "did you mean 'revenue'?" in msg
    (path, msg), = _problems({"t": {"format": "segment", "events": {"Ad Clicked": "click"}}})
    assert path == "topics.sources.t" and "click events need cost" in msg and "fields.cost" in msg
    problems = _problems({"t": {"format": "segment", "defaults": {"new_customer": "no", "devise": "x"}}})
    assert sorted(m for _, m in problems) == ["defaults.devise: not a field of kpimon's events nor a declared attribute",
                                              "defaults.new_customer: new_customer must be true or false"]
    for bad, expected in [({"transform": "string"}, "give path"), ({"path": "a", "equals": 1, "transform": "lower"}, "not both"),
                          ({"path": []}, "at least one path"), ({"path": [[]]}, "at least one path")]:
        (path, msg), = _problems({"t": {"format": "segment", "fields": {"campaign": bad}}})
        assert path.startswith("topics.sources.t.fields.campaign") and expected in msg, (bad, path, msg)
    (path, msg), = _problems({"t": {"format": "ga4", "each": "a..b"}})
    assert msg.startswith("each: ")
    (path, msg), = _problems({"t": "segment"}, arrival={"t": {"delay": "1h"}})
    assert path == "arrival.t" and "per event type" in msg


def test_shorthands_and_kpimon_topics():
    cfg = config_mod.from_dict({"measures": {"orders": {"event": "order"}}, "kpis": {"orders": {"measure": "orders"}},
                                "topics": {"sources": {"orders": "order", "web": "snowplow", "any": {}}}})
    assert cfg.topics.types() == {"orders": "order"}
    assert cfg.topics.sources["web"].format == "snowplow" and cfg.topics.sources["any"].format == "kpimon"


@pytest.mark.parametrize("obj, fmt", [
    ({"type": "click", "ts": 1, "campaign": "c"}, "kpimon"),
    (SEG_ORDER, "segment"),
    ({"event_id": "e", "collector_tstamp": "2024-03-05 10:00:00", "event_name": "page_view"}, "snowplow"),
    ({"client_id": "c", "events": []}, "ga4"),
    ({"hello": 1}, None),
])
def test_detect(obj, fmt):
    assert formats.detect(obj) == fmt


def test_a_file_line_goes_to_the_topic_of_its_format_and_broken_kpimon_rows_to_none():
    def topics(sources: dict) -> config_mod.Topics:
        return config_mod.from_dict({"measures": {"orders": {"event": "order"}}, "kpis": {"orders": {"measure": "orders"}},
                                     "topics": {"sources": sources}}).topics

    seg = topics({"orders": "order", "web": "segment"})
    assert seg.tracker_topic(SEG_ORDER) == "web"
    assert seg.tracker_topic({"type": "order", "ts": 1, "campaign": "c"}) is None  # kpimon's own
    assert seg.tracker_topic({"type": "ordr", "campaign": "c"}) is None  # broken: the contract refuses it
    assert seg.tracker_topic({"kind": "buy"}) is None  # a Segment topic does not take what is not Segment
    shop = _doc_yaml("format: mapping\n      name: kind")["topics"]["sources"]
    assert topics(shop).tracker_topic({"kind": "buy"}) == "shop-events"  # a declared mapping cannot be recognised
