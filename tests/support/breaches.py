"""Breach records for tests."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from kpi_core.results import Breach

MAY_1_NOON = int(datetime(2024, 5, 1, 12, tzinfo=timezone.utc).timestamp() * 1000)

# CTR 1.00% against a 2.00% target, from 100 clicks on 10,000 impressions, in one minute of spring-sale.
CTR_BREACH = Breach(
    kpi="ctr",
    value=0.01,
    target=0.02,
    direction="higher",
    unit="percent",
    numerator=100,
    denominator=10_000,
    numerator_name="clicks",
    denominator_name="impressions",
    window="1m",
    start=MAY_1_NOON,
    end=MAY_1_NOON + 60_000,
    dims=("campaign",),
    group={"campaign": "spring-sale"},
)


def make_breach(**changes: Any) -> Breach:
    """``CTR_BREACH`` with some fields changed."""
    return replace(CTR_BREACH, **changes)
