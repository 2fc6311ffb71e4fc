"""Result records: identities, JSON forms and human formatting."""

from __future__ import annotations

import pytest

from kpi_core.results import Snapshot, breakdown_name, format_value, iso

from .helpers import MIN, T

ISO = [
    # a whole minute in 2024
    (T, "2024-05-01T12:00:00Z"),
    # milliseconds are kept
    (T + 1, "2024-05-01T12:00:00.001000Z"),
    # the epoch
    (0, "1970-01-01T00:00:00Z"),
]


@pytest.mark.parametrize(("ms", "text"), ISO)
def test_iso(ms: int, text: str) -> None:
    assert iso(ms) == text


@pytest.mark.parametrize(
    ("dims", "name"),
    [
        # the global total
        ((), "total"),
        # one dimension
        (("campaign",), "campaign"),
        # two, in order
        (("campaign", "channel"), "campaign,channel"),
    ],
)
def test_breakdown_name(dims: tuple[str, ...], name: str) -> None:
    assert breakdown_name(dims) == name


FORMATS = [
    # percent KPIs are stored as fractions
    (0.0234, "percent", "2.34%"),
    # currency: two decimals and thousands separators
    (1234.5, "currency", "1,234.50"),
    # seconds with one decimal
    (61.25, "seconds", "61.2s"),
    # counts without decimals
    (12345.0, "count", "12,345"),
    # a plain ratio: four significant digits
    (10.0 / 3, "ratio", "3.333"),
]


@pytest.mark.parametrize(("value", "unit", "text"), FORMATS)
def test_format_value(value: float, unit: str, text: str) -> None:
    assert format_value(value, unit) == text


def test_the_total_snapshot_key_and_json() -> None:
    snap = Snapshot("1m", T, T + MIN, (), {}, "sessions", {"sessions": 0.0}, {"bounce_rate": None})
    assert snap.key == f"1m|{T}|sessions|total"
    assert snap.to_json() == {
        "key": snap.key,
        "version": 1,
        "window": "1m",
        "start": "2024-05-01T12:00:00Z",
        "end": "2024-05-01T12:01:00Z",
        "breakdown": "total",
        "group": {},
        "phase": "sessions",
        "measures": {"sessions": 0.0},
        "kpis": {"bounce_rate": None},
        "provisional": {},
        "waiting_for": [],
    }


def test_a_two_dimension_key_lists_values_in_breakdown_order() -> None:
    snap = Snapshot("1h", T, T + 60 * MIN, ("channel", "campaign"), {"campaign": "a", "channel": "b"}, "events", {}, {})
    assert snap.key == f"1h|{T}|events|channel,campaign|b|a"
