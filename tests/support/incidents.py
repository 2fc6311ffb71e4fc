"""Alert events for tests: one campaign's thread opening, changing and resolving."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from kpi_core.incidents import AlertEvent, Contributor, Finding

MAY_1_NOON = int(datetime(2024, 5, 1, 12, tzinfo=timezone.utc).timestamp() * 1000)

# CTR 0.42% against a 2.00% target (4.10% usual), 42 clicks on 10,000 impressions, mostly mobile's doing.
CTR_FINDING = Finding(
    kpi="ctr",
    rule="target",
    severity="critical",
    value=0.0042,
    threshold=0.02,
    target=0.02,
    baseline=0.041,
    direction="higher",
    unit="percent",
    numerator=42,
    numerator_name="clicks",
    denominator=10_000,
    denominator_name="impressions",
    interval=(0.0031, 0.0052),
    contributor=Contributor(dimension="device", value="mobile", kpi_value=0.004, share=0.6, impact=-96.0),
)

# CPC 0.75 against a 0.50 target: lower is better.
CPC_FINDING = Finding(
    kpi="cpc",
    rule="target",
    severity="warning",
    value=0.75,
    threshold=0.5,
    target=0.5,
    baseline=None,
    direction="lower",
    unit="currency",
    numerator=31.5,
    numerator_name="click_cost",
    denominator=42,
    denominator_name="clicks",
)

OPENED = AlertEvent(
    thread="1m|campaign|spring-sale",
    seq=1,
    kind="opened",
    window="1m",
    start=MAY_1_NOON,
    end=MAY_1_NOON + 60_000,
    dims=("campaign",),
    group={"campaign": "spring-sale"},
    severity="critical",
    findings=[CTR_FINDING],
)


def make_event(**changes: Any) -> AlertEvent:
    """``OPENED`` with some fields changed."""
    return replace(OPENED, **changes)


def make_finding(base: Finding = CTR_FINDING, **changes: Any) -> Finding:
    return replace(base, **changes)


def thread_events() -> list[AlertEvent]:
    """A thread's life: opened (ctr), updated (cpc joins), resolved (both back)."""
    updated = make_event(seq=2, kind="updated", findings=[CTR_FINDING, CPC_FINDING],
                         start=MAY_1_NOON + 60_000, end=MAY_1_NOON + 120_000)
    resolved = make_event(
        seq=3, kind="resolved", start=MAY_1_NOON + 120_000, end=MAY_1_NOON + 180_000,
        findings=[make_finding(status="resolved", value=0.031, interval=None),
                  make_finding(CPC_FINDING, status="resolved", value=0.45)],
    )
    return [OPENED, updated, resolved]
