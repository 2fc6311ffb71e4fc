"""Event contract v1: decoding, validation and rejection reasons."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from kpi_core.errors import InvalidEvent
from kpi_core.events import MARKER_HEADER, MAX_TS_MS, MIN_TS_MS, REASONS, Event, decode, marker, parse_ts, to_json, validate

TS = 1_714_564_800_000  # 2024-05-01T12:00:00Z
BASE = {"ts": TS, "campaign": "spring", "channel": "search"}


def ev(etype: str, **fields: Any) -> dict[str, Any]:
    return {"type": etype, **BASE, **fields}


# -- valid events ----------------------------------------------------------------

VALID = [
    # impression: only the common fields
    (ev("impression"), {"campaign": "spring", "channel": "search"}),
    # click: an int cost becomes a float
    (ev("click", cost=2), {"campaign": "spring", "channel": "search", "cost": 2.0}),
    # pageview: three string fields
    (
        ev("pageview", visitor_id="v1", session_id="s1", page="/pricing"),
        {"campaign": "spring", "channel": "search", "visitor_id": "v1", "session_id": "s1", "page": "/pricing"},
    ),
    # lead at the mql stage
    (ev("lead", lead_id="l1", stage="mql"), {"campaign": "spring", "channel": "search", "lead_id": "l1", "stage": "mql"}),
    # order: revenue a float, new_customer a bool
    (
        ev("order", order_id="o1", revenue=99.5, customer_id="c1", new_customer=False),
        {
            "campaign": "spring",
            "channel": "search",
            "order_id": "o1",
            "revenue": 99.5,
            "customer_id": "c1",
            "new_customer": False,
        },
    ),
    # spend: a zero amount is allowed
    (ev("spend", amount=0), {"campaign": "spring", "channel": "search", "amount": 0.0}),
    # survey: both ends of the 0..10 scale are valid; here the top
    (ev("survey", score=10), {"campaign": "spring", "channel": "search", "score": 10}),
    # survey at the bottom of the scale
    (ev("survey", score=0), {"campaign": "spring", "channel": "search", "score": 0}),
    # pageview with the optional new_visitor flag
    (
        ev("pageview", visitor_id="v1", session_id="s1", page="/", new_visitor=True),
        {"campaign": "spring", "channel": "search", "visitor_id": "v1", "session_id": "s1", "page": "/", "new_visitor": True},
    ),
]


@pytest.mark.parametrize(("obj", "data"), VALID, ids=[f"{o['type']}-{i}" for i, (o, _) in enumerate(VALID)])
def test_valid_event_of_every_type(obj: dict[str, Any], data: dict[str, Any]) -> None:
    event = validate(obj)
    assert event == Event(obj["type"], TS, data)
    assert [type(v) for v in event.data.values()] == [type(v) for v in data.values()]


def test_every_event_type_is_covered_by_the_valid_table() -> None:
    from kpi_core.events import EVENT_TYPES

    assert {o["type"] for o, _ in VALID} == set(EVENT_TYPES)


def test_decode_from_bytes_gives_the_same_event_as_validate() -> None:
    raw = orjson.dumps(ev("click", cost=0.25, event_id="e-1"))
    assert decode(raw) == Event("click", TS, {"campaign": "spring", "channel": "search", "cost": 0.25, "event_id": "e-1"})


def test_implied_type_fills_in_a_missing_type() -> None:
    obj = {**BASE, "cost": 1.5}
    assert decode(orjson.dumps(obj), implied_type="click") == Event(
        "click", TS, {"campaign": "spring", "channel": "search", "cost": 1.5}
    )


def test_implied_type_matching_the_type_field_is_accepted() -> None:
    assert validate(ev("impression"), implied_type="impression").type == "impression"


def test_to_json_round_trips_through_validate() -> None:
    event = validate(ev("order", order_id="o1", revenue=12.5, customer_id="c1", new_customer=True, utm="x"))
    assert to_json(event) == {
        "type": "order",
        "ts": TS,
        "campaign": "spring",
        "channel": "search",
        "order_id": "o1",
        "revenue": 12.5,
        "customer_id": "c1",
        "new_customer": True,
        "utm": "x",
    }
    assert validate(to_json(event)) == event


# -- timestamps --------------------------------------------------------------------

TS_CASES = [
    # epoch milliseconds as an int are taken as they are
    (TS, TS),
    # a float in epoch ms is truncated to whole milliseconds
    (TS + 0.9, TS),
    # ISO-8601 with Z
    ("2024-05-01T12:00:00Z", TS),
    # ISO-8601 with +00:00 and milliseconds
    ("2024-05-01T12:00:00.123+00:00", TS + 123),
    # a positive offset: 14:00 at +02:00 is 12:00 UTC
    ("2024-05-01T14:00:00+02:00", TS),
    # a negative offset with milliseconds: 07:30:00.001 at -04:30 is 12:00:00.001 UTC
    ("2024-05-01T07:30:00.001-04:30", TS + 1),
    # the lowest allowed instant (inclusive)
    (MIN_TS_MS, MIN_TS_MS),
    # the last millisecond before 2100
    (MAX_TS_MS - 1, MAX_TS_MS - 1),
]


@pytest.mark.parametrize(("value", "expected"), TS_CASES)
def test_parse_ts_exact_milliseconds(value: Any, expected: int) -> None:
    assert parse_ts(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # 2004-03-22T01:32:09.416Z: timestamp()*1000 is 1079919129415.9999
        ("2004-03-22T01:32:09.416+00:00", 1_079_919_129_416),
        # 2038-11-20T21:25:19.535Z: timestamp()*1000 is 2173901119534.9998
        ("2038-11-20T21:25:19.535Z", 2_173_901_119_535),
    ],
)
def test_parse_ts_iso_milliseconds_are_never_truncated(value: str, expected: int) -> None:
    assert parse_ts(value) == expected


def test_iso_without_offset_is_rejected() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_ts("2024-05-01T12:00:00")
    assert info.value.reason == "bad_timestamp"
    assert "offset" in info.value.detail


# -- rejections ----------------------------------------------------------------------

MB = "x" * 1_000_000
CLICK = {"type": "click", **BASE, "cost": 1.0}

REJECTIONS = [
    # not JSON at all
    (b"{not json", None, "invalid_json"),
    # JSON has no NaN literal: orjson refuses it while decoding
    (b'{"type": "click", "ts": 1714564800000, "campaign": "a", "channel": "b", "cost": NaN}', None, "invalid_json"),
    # a number too big for a double (parses as inf) is refused while decoding
    (b'{"type": "click", "ts": 1714564800000, "campaign": "a", "channel": "b", "cost": 1e999}', None, "invalid_json"),
    # an array instead of an object
    (b'[{"type": "click"}]', None, "not_an_object"),
    # a bare string is not an object either
    (b'"click"', None, "not_an_object"),
    # no type and no implied type from the topic
    ({k: v for k, v in CLICK.items() if k != "type"}, None, "missing_field"),
    # campaign is required on every event
    ({k: v for k, v in CLICK.items() if k != "campaign"}, None, "missing_field"),
    # channel is required on every event
    ({k: v for k, v in CLICK.items() if k != "channel"}, None, "missing_field"),
    # ts is required
    ({k: v for k, v in CLICK.items() if k != "ts"}, None, "missing_field"),
    # a per-type field is required: click without cost
    ({k: v for k, v in CLICK.items() if k != "cost"}, None, "missing_field"),
    # cost as a string
    ({**CLICK, "cost": "1.0"}, None, "wrong_type"),
    # a boolean is not a number
    ({**CLICK, "cost": True}, None, "wrong_type"),
    # campaign must be a string
    ({**CLICK, "campaign": 7}, None, "wrong_type"),
    # new_customer must be a real boolean, not 1
    (ev("order", order_id="o", revenue=1.0, customer_id="c", new_customer=1), None, "wrong_type"),
    # negative revenue
    (ev("order", order_id="o", revenue=-0.01, customer_id="c", new_customer=True), None, "invalid_value"),
    # NaN reaching validate (e.g. from another decoder)
    ({**CLICK, "cost": math.nan}, None, "invalid_value"),
    # infinity reaching validate
    ({**CLICK, "cost": math.inf}, None, "invalid_value"),
    # an amount above 1e12
    (ev("spend", amount=1e12 + 1), None, "invalid_value"),
    # an empty campaign name
    ({**CLICK, "campaign": ""}, None, "invalid_value"),
    # a 1 MB campaign name
    ({**CLICK, "campaign": MB}, None, "invalid_value"),
    # a 1 MB extra attribute
    ({**CLICK, "utm_source": MB}, None, "invalid_value"),
    # a 1 MB event_id
    ({**CLICK, "event_id": MB}, None, "invalid_value"),
    # a lead stage outside lead|mql|sql
    (ev("lead", lead_id="l", stage="customer"), None, "invalid_value"),
    # a survey score of 11
    (ev("survey", score=11), None, "invalid_value"),
    # a survey score below 0
    (ev("survey", score=-1), None, "invalid_value"),
    # a fractional score
    (ev("survey", score=7.5), None, "invalid_value"),
    # a whole float is still not an integer score
    (ev("survey", score=9.0), None, "invalid_value"),
    # a score as a string is invalid_value too, not wrong_type
    (ev("survey", score="9"), None, "invalid_value"),
    # the optional new_visitor flag must be a boolean when present
    (ev("pageview", visitor_id="v", session_id="s", page="/", new_visitor="yes"), None, "wrong_type"),
    # an unknown event type
    ({**CLICK, "type": "purchase"}, None, "unknown_type"),
    # an unknown type on a typed topic is unknown before it is a mismatch
    ({**CLICK, "type": "purchase"}, "click", "unknown_type"),
    # an order on the clicks topic
    (ev("order", order_id="o", revenue=1.0, customer_id="c", new_customer=True), "click", "type_mismatch"),
    # ts that is not ISO-8601
    ({**CLICK, "ts": "yesterday"}, None, "bad_timestamp"),
    # ISO-8601 without an offset
    ({**CLICK, "ts": "2024-05-01T12:00:00"}, None, "bad_timestamp"),
    # ts before 2000-01-01
    ({**CLICK, "ts": MIN_TS_MS - 1}, None, "bad_timestamp"),
    # ts at 2100-01-01 (exclusive upper bound)
    ({**CLICK, "ts": MAX_TS_MS}, None, "bad_timestamp"),
    # epoch seconds instead of milliseconds land in 1970
    ({**CLICK, "ts": TS // 1000}, None, "bad_timestamp"),
    # ts as a boolean
    ({**CLICK, "ts": True}, None, "bad_timestamp"),
    # ts as a list
    ({**CLICK, "ts": [TS]}, None, "bad_timestamp"),
    # ts as an infinite float
    ({**CLICK, "ts": math.inf}, None, "bad_timestamp"),
    # an ISO year far outside the range
    ({**CLICK, "ts": "2150-01-01T00:00:00+00:00"}, None, "bad_timestamp"),
]


def _reject(value: Any, implied: str | None) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        if isinstance(value, bytes):
            decode(value, implied)
        else:
            validate(value, implied)
    return info.value


@pytest.mark.parametrize(("value", "implied", "reason"), REJECTIONS)
def test_rejection_reason(value: Any, implied: str | None, reason: str) -> None:
    err = _reject(value, implied)
    assert err.reason == reason
    assert err.reason in REASONS
    assert str(err).startswith(f"{reason}: ")


def test_every_reason_is_reachable() -> None:
    assert {reason for _, _, reason in REJECTIONS} == set(REASONS)


def test_a_rejection_detail_is_bounded_even_for_a_huge_value() -> None:
    err = _reject({**CLICK, "type": "x" * 1_000_000}, None)
    assert err.reason == "unknown_type"
    assert len(err.detail) < 100


@pytest.mark.parametrize("bad_type", [["click"], {"name": "click"}])
def test_an_unhashable_type_value_is_an_invalid_event(bad_type: Any) -> None:
    err = _reject({**CLICK, "type": bad_type}, None)
    assert err.reason in ("unknown_type", "wrong_type")


# -- extra attributes ------------------------------------------------------------------


def test_extra_string_attributes_are_kept_and_other_extras_ignored() -> None:
    event = validate(
        {
            **CLICK,
            "utm_source": "newsletter",
            "event_id": "e-9",
            "count": 3,
            "ratio": 0.5,
            "flag": True,
            "tags": ["a"],
            "nested": {"a": "b"},
            "nothing": None,
        }
    )
    assert event.data == {
        "campaign": "spring",
        "channel": "search",
        "cost": 1.0,
        "event_id": "e-9",
        "utm_source": "newsletter",
    }


def test_a_field_of_another_type_is_just_an_extra_here() -> None:
    # page on a click is a string attribute; revenue on an impression is ignored; new_visitor is checked only on page views
    click = validate({**CLICK, "page": "/offers", "new_visitor": "yes"})
    assert click.data == {"campaign": "spring", "channel": "search", "cost": 1.0, "page": "/offers", "new_visitor": "yes"}
    assert validate(ev("impression", revenue=5.0)).data == {"campaign": "spring", "channel": "search"}


def test_an_empty_extra_string_is_allowed() -> None:
    assert validate({**CLICK, "utm_source": ""}).data["utm_source"] == ""


ORDER_OF_CHECKS = [
    # unknown type is found before a missing ts
    ({"type": "visit", "campaign": "a", "channel": "b"}, "unknown_type"),
    # a bad ts before a missing campaign
    ({"type": "click", "ts": "soon", "channel": "b", "cost": 1.0}, "bad_timestamp"),
    # a missing campaign before a bad cost
    ({"type": "click", "ts": TS, "channel": "b", "cost": "x"}, "missing_field"),
    # a bad cost before a bad event_id
    ({**CLICK, "cost": -1, "event_id": 5}, "invalid_value"),
    # a bad event_id before an over-long extra
    ({**CLICK, "event_id": 5, "utm": "x" * 300}, "wrong_type"),
]


@pytest.mark.parametrize(("obj", "reason"), ORDER_OF_CHECKS)
def test_the_first_problem_in_check_order_is_reported(obj: dict[str, Any], reason: str) -> None:
    assert _reject(obj, None).reason == reason


def test_type_and_ts_never_land_in_data() -> None:
    assert set(validate(CLICK).data) == {"campaign", "channel", "cost"}


def test_a_string_of_exactly_the_maximum_length_is_accepted() -> None:
    name = "c" * 256
    assert validate({**CLICK, "campaign": name, "utm": name}).data["utm"] == name


def test_one_character_over_the_maximum_is_rejected() -> None:
    assert _reject({**CLICK, "utm": "c" * 257}, None).reason == "invalid_value"


# -- progress markers ----------------------------------------------------------------


def test_a_message_without_the_header_is_not_a_marker() -> None:
    assert marker(None) is None
    assert marker([]) is None
    assert marker([("other", b"1714564800000")]) is None


def test_a_marker_carries_its_promised_event_time() -> None:
    assert marker([("trace", b"x"), (MARKER_HEADER, b"1714564800000")]) == 1_714_564_800_000
    assert marker([(MARKER_HEADER, b" 1714564800000 ")]) == 1_714_564_800_000


@pytest.mark.parametrize("value", [b"", None, b"soon", b"-5", b"1714564800.5", b"1714564800", b"99999999999999"])
def test_a_malformed_marker_is_rejected_as_a_bad_timestamp(value: bytes | None) -> None:
    with pytest.raises(InvalidEvent) as err:
        marker([(MARKER_HEADER, value)])
    assert err.value.reason == "bad_timestamp"
    assert MARKER_HEADER in err.value.detail


# -- the fast path (``_valid``) against the rule-by-rule one (``_checked``) -------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kpi_core.events import _checked  # noqa: E402

_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 12), st.integers(MIN_TS_MS - 1, MIN_TS_MS + 1), st.just(MAX_TS_MS),
    st.sampled_from([1e12, 1e13, 2**53, -1, -0.5, float("inf"), float("nan"), 10.0, 11]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["", "lead", "mql", "x", "2024-05-01T12:00:00Z", "a" * 257]),
    st.text(max_size=5), st.lists(st.integers(), max_size=2),
)
_fields = st.sampled_from(["type", "ts", "campaign", "channel", "cost", "visitor_id", "session_id", "page", "lead_id",
                           "stage", "order_id", "revenue", "customer_id", "new_customer", "amount", "score", "new_visitor",
                           "report_version", "event_id", "device", "x" * 257])


@settings(max_examples=1000, deadline=None)
@given(base=st.sampled_from([
    {"type": "impression", "ts": MIN_TS_MS + 5, "campaign": "c", "channel": "s"},
    {"type": "pageview", "ts": MIN_TS_MS + 5, "campaign": "c", "channel": "s", "visitor_id": "v", "session_id": "s", "page": "/"},
    {"type": "order", "ts": MIN_TS_MS + 5, "campaign": "c", "channel": "s", "order_id": "o", "revenue": 5,
     "customer_id": "u", "new_customer": True},
    {"type": "spend", "ts": MIN_TS_MS + 5, "campaign": "c", "channel": "s", "amount": 2.5, "report_version": 3},
    {"type": "lead", "ts": MIN_TS_MS + 5, "campaign": "c", "channel": "s", "lead_id": "l", "stage": "mql"},
    {"type": "survey", "ts": MIN_TS_MS + 5, "campaign": "c", "channel": "s", "score": 9},
]), changes=st.dictionaries(_fields, _values, max_size=3), drop=st.lists(_fields, max_size=2),
       implied=st.sampled_from([None, None, "impression", "order"]))
def test_the_fast_path_accepts_and_builds_exactly_what_the_rules_do(base: dict[str, Any], changes: dict[str, Any],
                                                                     drop: list[str], implied: str | None) -> None:
    obj = {**{k: v for k, v in base.items() if k not in drop}, **changes}
    try:
        expected: Event | str = _checked(obj, implied)
    except InvalidEvent as exc:
        expected = exc.reason
    try:
        got: Event | str = validate(obj, implied)
    except InvalidEvent as exc:
        got = exc.reason
    assert got == expected
    if isinstance(got, Event):
        assert isinstance(expected, Event) and list(got.data) == list(expected.data)  # the same field order on the wire
