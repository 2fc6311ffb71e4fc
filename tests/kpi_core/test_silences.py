"""Silences: which groups and KPIs a silence mutes and when, its record format, validation, and
the fold of the compacted topic (latest per id wins, tombstones delete, bad records are ignored)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpi_core.silences import InvalidSilence, Silence, SilenceSet

from .helpers import MIN, T

HOUR = 60 * MIN


def make(
    matchers: dict[str, str] | None = None, *, id: str = "s1", start: int = T, end: int = T + HOUR, reason: str = "launch"
) -> Silence:
    return Silence(
        id=id, matchers=matchers or {"campaign": "spring"}, starts_at=start, ends_at=end, reason=reason, created_by="ana"
    )


MATCHES: list[tuple[dict[str, str], dict[str, str], str, bool]] = [
    # an exact campaign matcher mutes every KPI of that campaign
    ({"campaign": "spring"}, {"campaign": "spring"}, "ctr", True),
    # ... and that campaign's sub-groups too (a breakdown with more dimensions)
    ({"campaign": "spring"}, {"campaign": "spring", "device": "mobile"}, "ctr", True),
    # ... but not another campaign
    ({"campaign": "spring"}, {"campaign": "summer"}, "ctr", False),
    # ... nor the channel total: the group has no campaign dimension
    ({"campaign": "spring"}, {"channel": "email"}, "ctr", False),
    # ... nor the grand total (no dimensions at all)
    ({"campaign": "spring"}, {}, "ctr", False),
    # values are case-sensitive
    ({"campaign": "spring"}, {"campaign": "Spring"}, "ctr", False),
    # a glob matches by fnmatch
    ({"campaign": "spring-*"}, {"campaign": "spring-2024"}, "ctr", True),
    # ... but fnmatchcase is case-sensitive too
    ({"campaign": "spring-*"}, {"campaign": "SPRING-2024"}, "ctr", False),
    # ... and anchored at both ends
    ({"campaign": "spring-*"}, {"campaign": "old-spring-2024"}, "ctr", False),
    # ? matches one character
    ({"campaign": "q?"}, {"campaign": "q3"}, "ctr", True),
    # a character class
    ({"campaign": "q[12]"}, {"campaign": "q3"}, "ctr", False),
    # a value that looks like a glob still matches itself exactly
    ({"campaign": "q[1]"}, {"campaign": "q[1]"}, "ctr", True),
    # a kpi matcher selects the KPI...
    ({"campaign": "spring", "kpi": "ctr"}, {"campaign": "spring"}, "ctr", True),
    # ... and leaves the campaign's other KPIs alone
    ({"campaign": "spring", "kpi": "ctr"}, {"campaign": "spring"}, "cpc", False),
    # a kpi glob
    ({"kpi": "cost_*"}, {"campaign": "spring"}, "cost_per_lead", True),
    # a kpi-only silence mutes that KPI everywhere, grand total included
    ({"kpi": "roi"}, {}, "roi", True),
    # every matcher must match: channel matches, campaign doesn't
    ({"campaign": "spring", "channel": "email"}, {"campaign": "summer", "channel": "email"}, "ctr", False),
    # ... both match
    ({"campaign": "spring", "channel": "email"}, {"campaign": "spring", "channel": "email"}, "ctr", True),
    # ... a campaign+channel silence doesn't mute the campaign-only breakdown
    ({"campaign": "spring", "channel": "email"}, {"campaign": "spring"}, "ctr", False),
    # any other dimension works as a matcher
    ({"device": "mobile"}, {"campaign": "spring", "device": "mobile"}, "ctr", True),
    # "*" matches any value, but only where the dimension exists
    ({"channel": "*"}, {"channel": "social"}, "ctr", True),
    ({"channel": "*"}, {"campaign": "spring"}, "ctr", False),
]


@pytest.mark.parametrize(("matchers", "group", "kpi", "expected"), MATCHES)
def test_matches(matchers: dict[str, str], group: dict[str, str], kpi: str, expected: bool) -> None:
    assert make(matchers).matches(group, kpi, T + MIN) is expected


ACTIVE = [
    # the start is inclusive
    (T, True),
    # inside the window
    (T + 30 * MIN, True),
    # the last millisecond
    (T + HOUR - 1, True),
    # the end is exclusive: expiring "now" stops muting now
    (T + HOUR, False),
    # long after
    (T + 2 * HOUR, False),
    # before it starts
    (T - 1, False),
]


@pytest.mark.parametrize(("at", "expected"), ACTIVE)
def test_time_bounds(at: int, expected: bool) -> None:
    silence = make()
    assert silence.is_active(at) is expected
    assert silence.matches({"campaign": "spring"}, "ctr", at) is expected


STATES = [
    # not started yet
    (T - 1, "pending"),
    # in force
    (T, "active"),
    # over
    (T + HOUR, "expired"),
]


@pytest.mark.parametrize(("at", "state"), STATES)
def test_state(at: int, state: str) -> None:
    assert make().state(at) == state


EXPIRED = [
    # active: ends now, keeps its start
    (T, T + HOUR, T + MIN, (T, T + MIN)),
    # already over: keeps its own, earlier end (expiring never extends a silence)
    (T, T + HOUR, T + 2 * HOUR, (T, T + HOUR)),
    # not started: a 1 ms window just before now, in the past, so the record stays valid
    (T + HOUR, T + 2 * HOUR, T, (T - 1, T)),
    # expired in the very millisecond it started
    (T, T + HOUR, T, (T - 1, T)),
]


@pytest.mark.parametrize(("start", "end", "at", "bounds"), EXPIRED)
def test_expired(start: int, end: int, at: int, bounds: tuple[int, int]) -> None:
    expired = make(start=start, end=end).expired(at)
    assert (expired.starts_at, expired.ends_at) == bounds
    assert not expired.is_active(at)
    assert (expired.id, expired.matchers, expired.reason) == ("s1", {"campaign": "spring"}, "launch")


INVALID: list[tuple[dict[str, Any], str]] = [
    # no matcher at all would mute everything: refused
    ({"matchers": {}}, "no_matcher"),
    # an empty matcher value
    ({"matchers": {"campaign": ""}}, "bad_matcher"),
    # an empty dimension name
    ({"matchers": {"": "spring"}}, "bad_matcher"),
    # a non-string value (e.g. from a hand-written record)
    ({"matchers": {"campaign": 3}}, "bad_matcher"),
    # matchers that are not a mapping
    ({"matchers": ["campaign", "spring"]}, "bad_matcher"),
    # ends when it starts
    ({"ends_at": T}, "bad_time"),
    # ends before it starts
    ({"ends_at": T - 1}, "bad_time"),
    # times are integer milliseconds, not ISO strings
    ({"starts_at": "2024-05-01T12:00:00Z"}, "bad_time"),
    # ... nor booleans
    ({"ends_at": True}, "bad_time"),
    # a reason is required
    ({"reason": ""}, "no_reason"),
    # ... and whitespace is not a reason
    ({"reason": "   "}, "no_reason"),
    # an id is required
    ({"id": ""}, "missing_id"),
]


@pytest.mark.parametrize(("change", "code"), INVALID)
def test_validation(change: dict[str, Any], code: str) -> None:
    fields: dict[str, Any] = {
        "id": "s1",
        "matchers": {"campaign": "spring"},
        "starts_at": T,
        "ends_at": T + HOUR,
        "reason": "launch",
        "created_by": "ana",
    }
    with pytest.raises(InvalidSilence) as info:
        Silence(**(fields | change))
    assert info.value.reason == code


def test_matchers_are_copied_and_sorted() -> None:
    matchers = {"kpi": "ctr", "campaign": "spring"}
    silence = make(matchers)
    matchers["campaign"] = "summer"
    assert silence.matchers == {"campaign": "spring", "kpi": "ctr"}
    assert silence.describe() == "campaign=spring kpi=ctr"


def test_json_round_trip() -> None:
    silence = make({"campaign": "spring-*", "kpi": "ctr"})
    raw = orjson.loads(silence.to_bytes())
    assert raw == {
        "id": "s1",
        "matchers": {"campaign": "spring-*", "kpi": "ctr"},
        "starts_at": T,
        "ends_at": T + HOUR,
        "reason": "launch",
        "created_by": "ana",
    }
    assert Silence.from_json(raw) == silence


def test_from_json_ignores_unknown_fields() -> None:
    # A newer writer may add fields; older workers must still read the silence.
    raw = make().to_json() | {"comment_url": "https://example.com"}
    assert Silence.from_json(raw) == make()


FROM_JSON_ERRORS: list[tuple[Any, str]] = [
    # not an object
    ([1, 2], "not_an_object"),
    # a required field is missing
    ({"id": "s1", "matchers": {"campaign": "a"}, "starts_at": T, "reason": "x"}, "missing_field"),
    # created_by may be missing, but if present it must be a string
    (make().to_json() | {"created_by": 7}, "bad_field"),
]


@pytest.mark.parametrize(("raw", "code"), FROM_JSON_ERRORS)
def test_from_json_errors(raw: Any, code: str) -> None:
    with pytest.raises(InvalidSilence) as info:
        Silence.from_json(raw)
    assert info.value.reason == code


# --- the fold of the topic ----------------------------------------------------------------------


def _record(silence: Silence) -> tuple[str, bytes]:
    return silence.id, silence.to_bytes()


def test_latest_version_wins_and_tombstone_deletes() -> None:
    silences = SilenceSet()
    assert silences.apply(*_record(make(id="a"))) is None
    assert silences.apply(*_record(make(id="b", matchers={"channel": "email"}))) is None
    assert [s.id for s in silences] == ["a", "b"]
    # a new version of "a" (expired) replaces the old one
    assert silences.apply(*_record(make(id="a").expired(T + MIN))) is None
    assert silences.get("a") == make(id="a", end=T + MIN)
    assert [s.id for s in silences.active(T + 2 * MIN)] == ["b"]
    # a tombstone deletes it, and deleting again is harmless
    assert silences.apply("a", None) is None
    assert silences.apply("a", None) is None
    assert "a" not in silences and len(silences) == 1


def test_bytes_keys_are_decoded() -> None:
    silences = SilenceSet()
    assert silences.apply(b"s1", make().to_bytes()) is None
    assert silences.get("s1") == make()
    assert silences.apply(b"s1", None) is None
    assert len(silences) == 0


BAD_RECORDS: list[tuple[Any, bytes, str]] = [
    # not JSON at all
    ("s1", b"{not json", "invalid_json"),
    # binary junk
    ("s1", b"\xff\xfe\x00", "invalid_json"),
    # JSON but not an object
    ("s1", b"[1, 2]", "not_an_object"),
    # a silence that fails validation (no matcher)
    ("s1", orjson.dumps(make().to_json() | {"matchers": {}}), "no_matcher"),
    # the record key must be the silence's id
    ("other", make().to_bytes(), "key_mismatch"),
    # no key: a compacted topic can't hold it
    (None, make().to_bytes(), "missing_key"),
    # a key that isn't UTF-8
    (b"\xff", make().to_bytes(), "invalid_key"),
]


@pytest.mark.parametrize(("key", "value", "code"), BAD_RECORDS)
def test_bad_records_are_ignored_with_a_reason(key: Any, value: bytes, code: str) -> None:
    silences = SilenceSet([make(id="s1", matchers={"channel": "email"})])
    problem = silences.apply(key, value)
    assert problem is not None and problem.startswith(f"{code}:")
    # the set is unchanged: the previous version of s1 still holds
    assert silences.all() == [make(id="s1", matchers={"channel": "email"})]


def test_is_silenced_returns_the_silence_that_lasts_longest() -> None:
    short = make({"campaign": "spring"}, id="short", end=T + MIN)
    long = make({"campaign": "spring*"}, id="long", end=T + HOUR)
    other = make({"campaign": "summer"}, id="other", end=T + 2 * HOUR)
    silences = SilenceSet([short, long, other])
    assert silences.is_silenced({"campaign": "spring"}, "ctr", T) == long
    # once the long one is over nothing mutes spring
    assert silences.is_silenced({"campaign": "spring"}, "ctr", T + HOUR) is None
    # the channel total is never muted by campaign silences
    assert silences.is_silenced({"channel": "email"}, "ctr", T) is None


def test_active_lists_only_silences_in_force() -> None:
    silences = SilenceSet(
        [
            make(id="past", start=T - HOUR, end=T),
            make(id="now", start=T, end=T + HOUR),
            make(id="later", start=T + HOUR, end=T + 2 * HOUR),
        ]
    )
    assert [s.id for s in silences.active(T)] == ["now"]
    assert [s.id for s in silences.all()] == ["past", "now", "later"]


_names = st.text(alphabet="abcdef-_0123456789", min_size=1, max_size=8)


@given(
    matchers=st.dictionaries(st.sampled_from(["campaign", "channel", "device", "kpi"]), _names, min_size=1),
    start=st.integers(0, 2**45),
    length=st.integers(1, 2**40),
    reason=st.text(min_size=1).filter(str.strip),
)
def test_round_trip_and_fold_property(matchers: dict[str, str], start: int, length: int, reason: str) -> None:
    silence = Silence(id="p", matchers=matchers, starts_at=start, ends_at=start + length, reason=reason, created_by="")
    silences = SilenceSet()
    assert silences.apply("p", silence.to_bytes()) is None
    assert silences.get("p") == silence
    # a silence without globs in its values mutes exactly the group it names
    group = {k: v for k, v in matchers.items() if k != "kpi"}
    assert silences.is_silenced(group, matchers.get("kpi", "ctr"), start) == silence
    assert silences.is_silenced(group, matchers.get("kpi", "ctr"), start + length) is None
