"""Target checks: is a closed window's KPI on the wrong side of its target?"""

from __future__ import annotations

from kpi_core.plan import Plan
from kpi_core.results import Breach, Snapshot


def is_breach(value: float, target: float, direction: str) -> bool:
    """True when the value is on the bad side of the target (equal is fine; context KPIs never breach)."""
    if direction == "context":
        return False
    return value < target if direction == "higher" else value > target


def breaches(plan: Plan, snapshot: Snapshot) -> list[Breach]:
    """Every KPI of the snapshot that misses its target. Missing KPIs never breach."""
    out: list[Breach] = []
    targets = plan.config.targets
    for k in plan.kpis:
        value = snapshot.kpis.get(k.name)
        target_cfg = targets.get(k.name)
        if value is None or target_cfg is None:
            continue
        target = target_cfg.for_group(snapshot.group)
        if target is None or not is_breach(value, target, k.kpi.direction):
            continue
        num, num_name, den, den_name = k.volume(snapshot.measures, snapshot.previous)
        if den < target_cfg.min_denominator:
            continue
        out.append(
            Breach(
                kpi=k.name,
                value=value,
                target=target,
                direction=k.kpi.direction,
                unit=k.kpi.unit,
                numerator=num,
                denominator=den,
                numerator_name=num_name,
                denominator_name=den_name,
                window=snapshot.window,
                start=snapshot.start,
                end=snapshot.end,
                dims=snapshot.dims,
                group=dict(snapshot.group),
            )
        )
    return out
