"""Alert records: what a rule found, and what people are told about a group's incidents.

An *incident* is one (rule, KPI, breakdown value) going pending → firing →
resolved. One group's incidents of one window size share a *thread*: in Slack a
single message, edited in place as its incidents change, with updates replied in
its thread. Each change of a thread is an ``AlertEvent`` with a sequence number;
``id`` (thread + sequence) is the idempotency key that keeps delivery exactly-once
across restarts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["opened", "updated", "resolved", "reminder", "withdrawn"]
Severity = Literal["warning", "critical"]


@dataclass(slots=True)
class Contributor:
    """The sub-group that moved a KPI most, e.g. the device that drove a campaign's drop."""

    dimension: str
    value: str
    kpi_value: float | None
    share: float  # of the parent's denominator
    impact: float  # denominator-weighted distance from the baseline (or target); signed, bad is negative for higher-is-better


@dataclass(slots=True)
class Finding:
    """One rule's verdict on one KPI of one group in one window."""

    kpi: str
    rule: str  # "target", "drift" or "no_data"
    severity: Severity
    value: float | None
    threshold: float | None  # the line that was crossed
    target: float | None
    baseline: float | None
    direction: str
    unit: str
    numerator: float
    numerator_name: str
    denominator: float
    denominator_name: str
    interval: tuple[float, float] | None = None  # Wilson score interval, for proportions
    contributor: Contributor | None = None
    # withdrawn: a revision of the window's data (config.arrival revise_for) put the value back
    # on the good side; the incident should never have opened.
    status: Literal["firing", "resolved", "withdrawn"] = "firing"
    revised_from: float | None = None  # withdrawn: the value the incident opened on
    # Seasonal drift (kpi_core/baseline.py): the expected range at the rule's confidence for
    # this hour and day, how unusual the value is (z in log space, one-sided p-value), and when.
    expected: tuple[float, float] | None = None
    z: float | None = None
    p_value: float | None = None
    when: str | None = None  # e.g. "09:00 on Tuesdays"
    # False-discovery control (alerting.fdr): the Benjamini–Hochberg adjusted p-value, i.e. the
    # smallest q at which this breach is still a discovery among the window's tests.
    q_value: float | None = None
    # One incident per root cause: breaches of other groups this incident stands for, each
    # {"breakdown", "group", "value", "share", "wider"}: a wider group (its campaign, channel or
    # the total) and the share of its change this group explains, or a finer one inside this.
    explains: list[dict[str, Any]] | None = None
    # KPI tree (kpis.<name>.drivers): the change since the reference window (the group's last
    # healthy one, starting at ``reference``), and each factor's change and part of it
    # ({"kpi", "inverse", "change", "part"}; the parts add up to ``change``), largest first.
    change: float | None = None
    reference: int | None = None
    drivers: list[dict[str, Any]] | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Finding:
        raw = dict(raw)
        if raw.get("interval") is not None:
            raw["interval"] = tuple(raw["interval"])
        if raw.get("expected") is not None:
            raw["expected"] = tuple(raw["expected"])
        if raw.get("contributor") is not None:
            raw["contributor"] = Contributor(**raw["contributor"])
        return cls(**raw)


@dataclass(slots=True)
class AlertEvent:
    """One change to one thread of incidents: the outbox record on the ``kpi-alerts`` topic."""

    thread: str  # stable: window name, breakdown and group values
    seq: int  # 1 for the opening, then +1 per change
    kind: Kind
    window: str
    start: int  # the evaluated window, epoch ms
    end: int
    dims: tuple[str, ...]
    group: dict[str, str]
    severity: Severity
    findings: list[Finding]  # every incident of the thread, firing or just resolved
    channel: str | None = None  # Slack channel from the routing rules; None: the default
    mention: str | None = None  # e.g. "<!subteam^S123>" or "@growth-team"
    grafana_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The idempotency key: one per thread and change."""
        return f"{self.thread}#{self.seq}"

    @property
    def status(self) -> str:
        return "resolved" if self.kind in ("resolved", "withdrawn") else "firing"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["dims"] = list(self.dims)
        out["id"] = self.id
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> AlertEvent:
        raw = {k: v for k, v in raw.items() if k != "id"}
        raw["dims"] = tuple(raw["dims"])
        raw["findings"] = [Finding.from_json(f) for f in raw["findings"]]
        return cls(**raw)
