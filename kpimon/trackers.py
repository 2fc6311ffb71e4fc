"""Contract events written as a tracker would send them: Segment, Snowplow, GA4 (docs/formats.md).

The simulator uses these so the demo and the tests run on trackers' formats. Each writer
is the inverse of its format's built-in mapping (kpi_core/formats.py) for the fields the
simulator produces: decoding what it writes gives the event back.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

#: The event types each tracker format carries (the rest stay on kpimon's own topics: ad
#: platforms, not trackers, report impressions, clicks and spend).
CARRIED = {
    "segment": ("pageview", "lead", "order"),
    "snowplow": ("pageview", "lead", "order"),
    "ga4": ("pageview", "lead", "order"),
}

#: Simulator devices as Snowplow's user-agent enrichment (YAUAA) names the device class.
_YAUAA = {"desktop": "Desktop", "mobile": "Mobile", "tablet": "Tablet"}


def _iso(ts: int, offset: bool = True) -> str:
    text = datetime.fromtimestamp(ts / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts % 1000:03d}"
    return text + "Z" if offset else text.replace("T", " ")


def _event_id(etype: str, e: dict[str, Any]) -> str:
    key = e.get("order_id") or (f"{e['lead_id']}-{e['stage']}" if etype == "lead" else None) or f"{e['session_id']}-{e['ts']}-{e['page']}"
    return f"{etype}-{key}"


def segment(etype: str, e: dict[str, Any]) -> dict[str, Any]:
    """A Segment page call or track call (Lead Generated, Order Completed)."""
    context: dict[str, Any] = {"campaign": {"name": e["campaign"], "medium": e["channel"]}}
    if "device" in e:
        context["device"] = {"type": e["device"]}
    if "country" in e:
        context["location"] = {"country": e["country"]}
    msg: dict[str, Any] = {"messageId": _event_id(etype, e), "timestamp": _iso(e["ts"]), "context": context}
    if etype == "pageview":
        context["sessionId"] = e["session_id"]
        return {**msg, "type": "page", "anonymousId": e["visitor_id"], "properties": {"path": e["page"]}}
    if etype == "lead":
        return {**msg, "type": "track", "event": "Lead Generated", "userId": e["lead_id"],
                "properties": {"lead_id": e["lead_id"], "stage": e["stage"]}}
    return {**msg, "type": "track", "event": "Order Completed", "userId": e["customer_id"],
            "properties": {"order_id": e["order_id"], "revenue": e["revenue"], "currency": "USD", "new_customer": e["new_customer"]}}


def snowplow(etype: str, e: dict[str, Any]) -> dict[str, Any]:
    """An enriched event as the analytics SDKs write it as JSON (empty columns are null)."""
    msg: dict[str, Any] = {
        "app_id": "shop", "platform": "web", "event_id": _event_id(etype, e),
        "collector_tstamp": _iso(e["ts"], offset=False), "derived_tstamp": _iso(e["ts"], offset=False),
        "mkt_campaign": e["campaign"], "mkt_medium": e["channel"], "mkt_source": None,
        "geo_country": e.get("country"), "domain_userid": e.get("visitor_id"), "domain_sessionid": e.get("session_id"),
        "domain_sessionidx": None, "user_id": None, "se_category": None,
    }
    if "device" in e:
        msg["contexts_nl_basjes_yauaa_context_1"] = [{"deviceClass": _YAUAA.get(e["device"], e["device"])}]
    if etype == "pageview":
        return {**msg, "event": "page_view", "event_name": "page_view", "page_urlpath": e["page"]}
    if etype == "lead":
        return {**msg, "event": "struct", "event_name": "event", "se_category": "lead", "se_action": e["stage"], "se_label": e["lead_id"]}
    return {**msg, "event": "transaction", "event_name": "transaction", "user_id": e["customer_id"],
            "tr_orderid": e["order_id"], "tr_total": e["revenue"],
            "contexts_com_kpimon_customer_1": [{"new_customer": e["new_customer"]}]}


def ga4(etype: str, e: dict[str, Any]) -> dict[str, Any]:
    """A Measurement Protocol request body with one event."""
    params: dict[str, Any] = {"campaign": e["campaign"], "medium": e["channel"]}
    msg: dict[str, Any] = {"client_id": e.get("visitor_id") or e.get("customer_id") or e["lead_id"],
                           "timestamp_micros": e["ts"] * 1000}
    if "device" in e:
        msg["device"] = {"category": e["device"]}
    if "country" in e:
        msg["user_location"] = {"country_id": e["country"]}
    if etype == "pageview":
        params.update(session_id=e["session_id"], page_location=f"https://shop.example{e['page']}", engagement_time_msec=100)
        name = "page_view"
    elif etype == "lead":
        params.update(lead_id=e["lead_id"], stage=e["stage"])
        name = "generate_lead"
    else:
        msg["user_id"] = e["customer_id"]
        params.update(transaction_id=e["order_id"], value=e["revenue"], currency="USD", new_customer=e["new_customer"])
        name = "purchase"
    return {**msg, "events": [{"name": name, "params": params}]}


WRITERS: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {"segment": segment, "snowplow": snowplow, "ga4": ga4}
