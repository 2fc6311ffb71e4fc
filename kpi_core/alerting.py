"""Alert rules: from closed windows to incidents, and from incidents to thread events.

For each closed window the engine asks, per KPI with a rule: is there enough
volume to say anything; is the value (or, for proportions, its whole Wilson
interval) past the static target or past the drift line below its baseline; how
many windows in a row; and does a firing incident clear past the hysteresis line.
Incident changes of one group become one ``AlertEvent`` for that group's thread.
Everything runs on event time (window starts), so replay gives the same alerts.

A revision of a published window (``revise``) judges it again where it is the last
window a rule judged: from the incident's state before that window, with the revised
values. An incident that the revised values would not have opened is *withdrawn*.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from zoneinfo import ZoneInfo
from typing import Any, Iterator
from urllib.parse import urlencode

import orjson

from kpi_core.aggregate import NEVER
from kpi_core.baseline import Expectation, Seasonal, local_hour_and_day, two_sided_z, upper_tail
from kpi_core.combine import ClosedWindow
from kpi_core.config import Target, driver_factors
from kpi_core.incidents import AlertEvent, Contributor, Finding
from kpi_core.plan import EVENTS, KpiPlan, Plan
from kpi_core.results import Snapshot, breakdown_name
from kpi_core.state import Change, drain

WEEK_MS = 7 * 86_400_000
_DAYS = ("Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays", "Sundays")
NO_DATA = "no_data"
STALE = "stale"  # a delayed source (config.arrival) further behind the fast streams than its delay
RULES = ("target", "drift", NO_DATA, STALE)  # what a finding's rule may be
HISTORY = 24  # windows of a group's recent values kept for the chart of an incident's opening

Group = tuple[str, ...]
Children = dict[tuple[Any, ...], list[tuple[str, Snapshot]]]  # (dims, group) -> [(the extra dim, a sub-group's snapshot)]


def wilson(successes: float, trials: float, confidence: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion: honest with small counts, unlike p ± z·se."""
    z = two_sided_z(confidence)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def score_p(successes: float, trials: float, line: float, direction: str) -> float | None:
    """One-sided p-value of a proportion this far to the bad side of ``line``, were its true
    rate on the line: the score test that the Wilson interval inverts (its interval at
    confidence c lies wholly on the bad side exactly when this is below (1 − c) / 2)."""
    if trials <= 0 or not 0 < line < 1:
        return None
    z = (successes / trials - line) / math.sqrt(line * (1 - line) / trials)
    return upper_tail(-z if direction == "higher" else z)


def bh_qvalues(pvalues: list[float], m: int | None = None) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (q-values), in the input's order.

    q_(i) = min over j ≥ i of m · p_(j) / j, for the p-values sorted ascending: a breach is
    a discovery at level q exactly when the step-up procedure at q rejects it. ``m`` is the
    family's size when more tests were run than are listed. Ties get the same q-value, so the
    result does not depend on the order of the input.
    """
    m = len(pvalues) if m is None else m
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    out = [1.0] * len(pvalues)
    running = 1.0
    for rank in range(len(order), 0, -1):
        i = order[rank - 1]
        running = min(running, m * pvalues[i] / rank)
        out[i] = running
    return out


def _ratio(m: dict[str, float], num: str, den: str) -> float | None:
    d = m.get(den, 0.0)
    return m.get(num, 0.0) / d if d else None


def is_proportion(plan: Plan, k: KpiPlan) -> bool:
    """A ratio of two plain counts over events, e.g. clicks / impressions."""
    if not k.kpi.ratio or k.kpi.scale != 1:
        return False
    measures = plan.config.measures
    return all(measures[m].event and not measures[m].sum and not measures[m].distinct for m in k.kpi.ratio)


def _bad_side(value: float, line: float, direction: str) -> bool:
    return value < line if direction == "higher" else value > line


# A finer group accounting for more than this share of a wider one's shortfall, and for more than
# twice any other breaching group of its breakdown within it, is the wider one's root cause.
EXPLAINS = 0.5


def _inside(narrow: Snapshot, wide: Snapshot) -> bool:
    """``narrow`` is a strictly finer group within ``wide`` (campaign X on iOS within campaign X, or the total)."""
    return (len(narrow.dims) > len(wide.dims) and set(wide.dims) <= set(narrow.dims)
            and all(narrow.group[d] == wide.group[d] for d in wide.dims))


def _shortfall(t: Test) -> float:
    """How far a breach is to its bad side, weighted by volume: (reference − value) × denominator
    for a higher-is-better KPI. Over the groups that partition a wider one it adds up to the wider
    one's (a ratio's value × denominator is its numerator)."""
    f = t.breach
    if f is None or t.reference is None:
        return 0.0
    bad = t.reference - t.value if f.direction == "higher" else t.value - t.reference  # type: ignore[operator]
    return bad * t.den


@dataclass(slots=True)
class Incident:
    """One (KPI rule, window size, group)."""

    status: str = "ok"  # ok, pending, firing
    streak: int = 0  # consecutive breaching windows
    severity: str = "warning"
    resolved_at: int | None = None  # event time of the last resolve
    notified_at: int = 0  # window start of the last notification
    finding: dict[str, Any] | None = None  # the latest finding, for the thread's message
    evaluated: int = -1  # start of the last window evaluated: a window seen twice (after a crash) counts once
    # Rules over revisable data: the state before the last evaluation, so a revision of that
    # window can judge it again from there.
    before: dict[str, Any] | None = None
    z: float | None = None  # seasonal drift: the last window's z (two windows of evidence judge a sustained shift)
    family: int = 0  # how many tests the last window's false-discovery control weighed this one with


@dataclass(slots=True)
class Test:
    """One rule judged on one group in one window, before the window's tests are weighed together."""

    kpi: str
    ikey: tuple[Any, ...]  # (kpi, window index, breakdown index, group)
    snap: Snapshot
    rule: Target
    value: float
    num: float
    den: float
    lines: list[tuple[str, float]]
    baseline: float | None
    interval: tuple[float, float] | None
    direction: str
    finding: Finding | None  # None: inside every line (or, once weighed, not a discovery)
    p: float | None  # one-sided p-value; None: a rule without statistics (outside false-discovery control)
    reference: float | None  # what the breach is measured from: the baseline (drift) or the line
    breach: Finding | None = None  # the finding before false-discovery control
    may_open: bool = True  # False: another group's incident stands for this breach
    again: bool = False  # a revision judging the window again


@dataclass(slots=True)
class Thread:
    seq: int = 0
    firing: list[str] | None = None  # KPI names with a firing incident

    def __post_init__(self) -> None:
        if self.firing is None:
            self.firing = []


@dataclass(slots=True)
class Baseline:
    """Trailing windows of one KPI of one group: (start, numerator, denominator, value)."""

    rows: list[list[float]]
    ewma: float | None = None


class AlertEngine:
    """Rule evaluation and incident state for the groups of one combine partition."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        cfg = plan.config
        self.rules = {k.name: (k, cfg.targets[k.name]) for k in plan.kpis if k.name in cfg.targets}
        self.proportions = {k.name for k in plan.kpis if is_proportion(plan, k)}
        self.revisable = {k.name for k in plan.kpis if k.waits & plan.revise_for.keys()}
        self.incidents: dict[tuple[Any, ...], Incident] = {}
        self.threads: dict[tuple[Any, ...], Thread] = {}
        self.baselines: dict[tuple[Any, ...], Baseline] = {}
        self.seasonal: dict[tuple[Any, ...], Seasonal] = {}  # drift baseline "seasonal" (kpi_core/baseline.py)
        self.tz = ZoneInfo(cfg.alerting.timezone)
        self.active: dict[tuple[Any, ...], int] = {}  # no-data tracking: (wi, bi, group) -> last active start
        self.feeds: dict[str, Incident] = {}  # delayed event type -> its stale-feed incident
        self.feed_seq: dict[str, int] = {}  # delayed event type -> its thread's last sequence number
        self._dirty: set[tuple[Any, ...]] = set()
        # KPI trees: per KPI, its factors (name, ±1, numerator, denominator), and the measures
        # of each group's last healthy window, which an alert's drivers are measured from.
        self.trees = {
            name: [(f, sign, *cfg.kpis[f].ratio) for f, sign in driver_factors(k.kpi)]  # type: ignore[misc]
            for name, (k, _) in self.rules.items() if k.kpi.drivers
        }
        self.tree_measures = {name: sorted({m for _, _, a, b in tree for m in (a, b)}) for name, tree in self.trees.items()}
        self.references: dict[tuple[Any, ...], tuple[int, dict[str, float]]] = {}
        # Each judged group's recent values, for the chart of an incident's opening (alerts/charts.py).
        # Memory only: a restarted worker's first charts show the windows judged since it started.
        self.history: dict[tuple[Any, ...], dict[int, dict[str, float | None]]] = {}
        nd = cfg.alerting.no_data
        self.no_data = nd
        self._breakdown_set = set(plan.breakdowns)
        # Per breakdown, the coarser breakdowns whose groups contain its groups.
        self._coarser = {b: [c for c in plan.breakdowns if len(c) < len(b) and set(c) <= set(b)] for b in plan.breakdowns}
        #: The measures judging reads (what the judge's hand-over keeps of a snapshot).
        self.reads = {m for k, _ in self.rules.values() for m in k.kpi.refs()} | {m for ms in self.tree_measures.values() for m in ms}
        self.reads |= set(nd.measures) if nd else set()
        self._no_data_breakdowns = {i for i, b in enumerate(plan.breakdowns) if nd and list(b) in nd.breakdowns}

    # -- evaluation ------------------------------------------------------------

    def evaluate(self, wi: int, start: int, phase: str, snapshots: list[Snapshot]) -> list[AlertEvent]:
        """All thread events caused by one closed window (of one phase) of this partition.

        Every rule is tested on every group first; the tests are then weighed together
        (false-discovery control, root causes) before any incident moves.
        """
        snapshots = self._ordered(snapshots)
        self._record_history(wi, snapshots)
        tests = [t for kpi, bi, group, snap in self._judged(snapshots) if (t := self._test(kpi, wi, bi, group, snap)) is not None]
        self._weigh(tests)
        kids = self._children(snapshots)
        changed: dict[tuple[Any, ...], dict[str, str]] = {}  # thread -> kpi -> what happened
        contexts: dict[tuple[Any, ...], Snapshot] = {}
        for t in tests:
            what = self._conclude(t, kids)
            if what:
                tkey = t.ikey[1:]
                changed.setdefault(tkey, {})[t.kpi] = what
                contexts[tkey] = t.snap
        if phase == EVENTS and self.no_data:
            self._no_data(wi, start, snapshots, changed, contexts)
        return self._thread_events(changed, contexts)

    def _judged(self, snapshots: list[Snapshot]) -> Iterator[tuple[str, int, Group, Snapshot]]:
        """(KPI, breakdown index, group, snapshot) for each KPI a rule judges."""
        for snap in snapshots:
            bi = self.plan.breakdowns.index(snap.dims)
            group = tuple(snap.group[d] for d in snap.dims)
            for kpi in snap.kpis:
                if kpi in self.rules:
                    yield kpi, bi, group, snap

    def _record_history(self, wi: int, snapshots: list[Snapshot]) -> None:
        for snap in snapshots:
            values = {k: v for k, v in snap.kpis.items() if k in self.rules}
            if not values:
                continue
            key = (wi, self.plan.breakdowns.index(snap.dims), tuple(snap.group[d] for d in snap.dims))
            recent = self.history.setdefault(key, {})
            recent.setdefault(snap.start, {}).update(values)  # each phase judges its own KPIs
            if len(recent) > HISTORY:
                del recent[min(recent)]
        if snapshots:
            # Groups gone quiet for HISTORY windows go: campaigns come and go over months.
            w = self.plan.windows[wi]
            cutoff = snapshots[0].start - HISTORY * (w.step or w.size)
            for key in [k for k, v in self.history.items() if k[0] == wi and next(reversed(v)) < cutoff]:
                del self.history[key]

    def recent(self, wi: int, bi: int, group: Group, kpis: list[str]) -> dict[str, list[list[Any]]]:
        """Per KPI, its values in the group's last ``HISTORY`` judged windows: ``[[start, value], ...]``."""
        recent = self.history.get((wi, bi, group), {})
        return {k: [[start, recent[start].get(k)] for start in sorted(recent)] for k in kpis}

    def _ordered(self, snapshots: list[Snapshot]) -> list[Snapshot]:
        # The same window judged whole (replay) or gathered from partitions (live) in any order
        # weighs the same tests in the same order.
        index = self.plan.breakdowns.index
        return sorted(snapshots, key=lambda s: (index(s.dims), tuple(s.group[d] for d in s.dims)))

    def judge(self, closed: ClosedWindow) -> list[AlertEvent]:
        """Thread events caused by one closed window, or by a revision of one."""
        judge = self.revise if closed.revision else self.evaluate
        return judge(closed.window, closed.start, closed.phase, closed.snapshots)

    def _thread_events(self, changed: dict[tuple[Any, ...], dict[str, str]], contexts: dict[tuple[Any, ...], Snapshot],
                       extra: dict[tuple[Any, ...], dict[str, Any]] | None = None) -> list[AlertEvent]:
        events = []
        for tkey, what in changed.items():
            event = self._thread_event(tkey, what, contexts[tkey], (extra or {}).get(tkey))
            if event:
                events.append(event)
        return events

    def revise(self, wi: int, start: int, phase: str, snapshots: list[Snapshot]) -> list[AlertEvent]:
        """Thread events caused by revised snapshots (version 3 and on) of a published window.

        A KPI a rule never judged in this window (it was provisional) is judged now; one whose
        last judged window this is, is judged again from the state before it; an older window
        is history that later windows have judged since, and changes nothing. The revised tests
        are weighed in a family at least as large as the window's first one.
        """
        snapshots = self._ordered(snapshots)
        tests: list[Test] = []
        again: dict[tuple[Any, ...], tuple[Incident, Snapshot]] = {}  # judged again: the incident as it was
        least = 0
        for kpi, bi, group, snap in self._judged(snapshots):
            ikey = (kpi, wi, bi, group)
            inc = self.incidents.get(ikey)
            if inc is not None and inc.evaluated > snap.start:
                continue
            if inc is not None and inc.evaluated == snap.start:
                if inc.before is None:
                    continue  # judged before revisions existed: nothing to start from
                again[ikey] = (inc, snap)
                least = max(least, inc.family)
                self.incidents[ikey] = Incident(**inc.before)
            t = self._test(kpi, wi, bi, group, snap, again=ikey in again)
            if t is not None:
                tests.append(t)
        self._weigh(tests, least=least)
        changed: dict[tuple[Any, ...], dict[str, str]] = {}
        contexts: dict[tuple[Any, ...], Snapshot] = {}
        extra: dict[tuple[Any, ...], dict[str, Any]] = {}
        kids = self._children(snapshots)
        by_key = {t.ikey: t for t in tests}
        results = {ikey: self._conclude(t, kids) for ikey, t in by_key.items()}
        for ikey in [*results, *(k for k in again if k not in results)]:
            snap = again[ikey][1] if ikey in again else by_key[ikey].snap
            what = self._compare(ikey, *again[ikey]) if ikey in again else results[ikey]
            if what:
                tkey = ikey[1:]
                changed.setdefault(tkey, {})[ikey[0]] = what
                contexts[tkey] = snap
                extra[tkey] = {"revision": snap.version, "revised": snap.revised}
        return self._thread_events(changed, contexts, extra)

    def _compare(self, ikey: tuple[Any, ...], inc: Incident, snap: Snapshot) -> str | None:
        """What judging an incident's last window again (from its state before) changed."""
        was_firing = inc.status == "firing"
        now = self.incidents[ikey]
        assert inc.before is not None
        if was_firing and now.status != "firing":
            if inc.before["status"] == "firing":
                return "resolved"  # opened earlier, and this window clears it
            # It would never have opened on these values: withdrawn, not resolved.
            now.finding = {**(inc.finding or {}), "status": "withdrawn", "value": snap.kpis.get(ikey[0]),
                           "revised_from": (inc.finding or {}).get("value")}
            return "withdrawn"
        if not was_firing and now.status == "firing":
            return "opened"
        if was_firing:
            now.notified_at = inc.notified_at
        return None

    def _test(self, kpi: str, wi: int, bi: int, group: Group, snap: Snapshot, *, again: bool = False) -> Test | None:
        """One rule on one group: where the value stands against its lines, and how surprising that is."""
        k, target = self.rules[kpi]
        rule = target.rule_for(snap.group)
        value = snap.kpis[kpi]
        num, num_name, den, den_name = k.volume(snap.measures, snap.previous)
        expectation = baseline = None
        if rule.drift is not None:
            expectation = self._expect(kpi, wi, bi, group, rule, snap.start, num, den)
            baseline = expectation.centre if expectation else self._baseline(kpi, wi, bi, group, rule, snap.start)
        ikey = (kpi, wi, bi, group)
        inc = self.incidents.get(ikey) or Incident()
        if snap.start <= inc.evaluated:
            return None  # finalized again after a restart: already evaluated
        if kpi in self.revisable and self.plan.window_revise[wi]:
            inc.before = {**asdict(inc), "before": None}
        inc.evaluated = snap.start
        self.incidents[ikey] = inc
        self._dirty.add(("i", *ikey))
        if value is None or den < rule.min_denominator or num < rule.min_numerator:
            return None  # not enough volume to say anything: no change either way
        direction = k.kpi.direction
        lines = []
        if rule.value is not None:
            lines.append(("target", rule.value))
        seasonal = None
        prev_z = inc.z
        if expectation is not None and value is not None:
            seasonal = self._seasonal_breach(expectation, rule, value, direction, prev_z)
            inc.z = expectation.z(value)
            if seasonal is not None:
                lines.append(("drift", seasonal[0]))
        elif rule.drift and baseline is not None:
            factor = 1 - rule.drift.change if direction == "higher" else 1 + rule.drift.change
            lines.append(("drift", baseline * factor))
        if expectation is None:
            inc.z = None
        proportion = kpi in self.proportions and den > 0
        interval = wilson(num, den, rule.confidence) if rule.confidence and proportion else None
        breached = []
        for name, line in lines:
            if name == "drift" and seasonal is not None:
                # Judged on its expected range already (volume included): it left it on this side.
                breached.append((abs(value - line) / abs(line) if line else math.inf, name, line))
                continue
            # With a confidence level, the whole interval must lie on the bad side.
            probe = (interval[1] if direction == "higher" else interval[0]) if interval else value
            if _bad_side(probe, line, direction):
                breached.append((abs(value - line) / abs(line) if line else math.inf, name, line))
        # The test's p-value: for a seasonal rule, the evidence its range judged; for a
        # proportion with a confidence level, the score test (the one its Wilson interval
        # inverts) against the line. A plain threshold carries no statistics: no p-value, and
        # false-discovery control leaves it alone.
        p = None
        if expectation is not None and rule.drift is not None:
            side = seasonal[1] if seasonal else direction
            z = -inc.z if side == "higher" else inc.z  # spreads to the bad side (higher is better: below)
            if direction not in ("higher", "lower") or rule.drift.sides == "both":
                z = abs(inc.z)
            if prev_z is not None and seasonal is not None and (prev_z > 0) == (inc.z > 0):
                z = max(z, (abs(prev_z) + abs(inc.z)) / math.sqrt(2))  # a sustained shift: two windows of evidence
            p = upper_tail(z)
        elif interval is not None and lines:
            chosen = max(breached)[2] if breached else lines[0][1]
            p = score_p(num, den, chosen, direction)
        finding = None
        if breached:
            size, rule_name, line = max(breached)
            severity = "critical" if size >= rule.critical else "warning"
            finding = Finding(
                kpi=kpi, rule=rule_name, severity=severity, value=value, threshold=line, target=rule.value,
                baseline=baseline, direction=seasonal[1] if seasonal and rule_name == "drift" else direction, unit=k.kpi.unit, numerator=num, numerator_name=num_name,
                denominator=den, denominator_name=den_name, interval=interval,
            )
            if expectation is not None and rule.drift is not None:
                z = expectation.z(value)
                finding.expected = expectation.range(rule.drift.confidence)
                finding.z, finding.p_value = z, p
                finding.when = f"{expectation.hour:02d}:00 on {_DAYS[expectation.day]}"
            elif p is not None:
                finding.p_value = p
        reference = (baseline if finding.rule == "drift" else finding.threshold) if finding else None
        return Test(kpi, ikey, snap, rule, value, num, den, lines, baseline, interval, direction, finding, p, reference, again=again)

    def _weigh(self, tests: list[Test], *, least: int = 0) -> None:
        """Judge a window's tests together: which breaches are discoveries (Benjamini–Hochberg
        over the family's p-values), and which group each discovery's incident belongs to."""
        for t in tests:
            t.breach = t.finding
        fdr = self.plan.config.alerting.fdr
        if fdr is not None:
            families: dict[str, list[Test]] = {}
            for t in tests:
                if t.p is not None:
                    families.setdefault("" if fdr.family == "global" else t.kpi, []).append(t)
            for family in families.values():
                m = max(len(family), least)
                for t, q in zip(family, bh_qvalues([t.p for t in family], m)):  # type: ignore[misc]
                    self.incidents[t.ikey].family = m
                    if t.finding is not None:
                        t.finding.q_value = q
                        if q > fdr.q:
                            t.finding = None  # not a discovery: as if inside its line
        self._root_causes(tests)

    def _conclude(self, t: Test, kids: Children) -> str | None:
        """Move one incident on its weighed test; learn the window if it is healthy."""
        kpi, wi, bi, group = t.ikey
        k = self.rules[kpi][0]
        inc = self.incidents[t.ikey]
        if t.finding is not None:
            t.finding.contributor = self._contributor(k, t.snap, kids, t.reference)
            self._drivers(t)
        what = self._step(t.ikey, inc, t.rule, t.finding, t.value, t.lines, t.snap, t.baseline, t.interval, t.direction, may_open=t.may_open)
        if inc.status == "ok":
            # Only healthy windows feed the baseline, or a lasting drop would become the new normal.
            self._remember(kpi, wi, bi, group, t.rule, t.snap.start, t.num, t.den, t.value, again=t.again)
            if kpi in self.trees:
                self.references[t.ikey] = (t.snap.start, {m: t.snap.measures.get(m, 0.0) for m in self.tree_measures[kpi]})
                self._dirty.add(("r", *t.ikey))
        return what

    def _drivers(self, t: Test) -> None:
        """The KPI tree's factors, from the group's last healthy window to this one: each one's
        change and its part of the KPI's, by log change (the logs of a product add up exactly,
        so the parts, shares of the change in proportion to them, add up to the change)."""
        tree = self.trees.get(t.kpi)
        ref = self.references.get(t.ikey)
        if not tree or ref is None or t.finding is None:
            return
        since, before = ref
        now = t.snap.measures
        ratio = self.rules[t.kpi][0].kpi.ratio
        assert ratio is not None
        factors = [(name, sign, _ratio(before, num, den), _ratio(now, num, den)) for name, sign, num, den in tree]
        whole = (_ratio(before, *ratio), _ratio(now, *ratio))
        if any(not (a and b and a > 0 and b > 0) for _, _, a, b in [*factors, ("", 1, *whole)]):
            return  # a factor undefined or zero in one of the windows: no log change to share out
        assert whole[0] is not None and whole[1] is not None
        change = whole[1] / whole[0] - 1
        logs = [sign * math.log(b / a) for _, sign, a, b in factors]  # type: ignore[operator]
        total = sum(logs)
        parts = [change * x / total if total else 0.0 for x in logs]
        t.finding.change, t.finding.reference = change, since
        t.finding.drivers = sorted(
            ({"kpi": name, "inverse": sign < 0, "change": b / a - 1, "part": part}  # type: ignore[operator]
             for (name, sign, a, b), part in zip(factors, parts)),
            key=lambda d: -abs(d["part"]),
        )

    def _step(self, ikey: tuple[Any, ...], inc: Incident, rule: Target, finding: Finding | None, value: float,
              lines: list[tuple[str, float]], snap: Snapshot, baseline: float | None, interval: Any, direction: str,
              *, may_open: bool = True) -> str | None:
        """Advance one incident's state machine; return what changed ("opened", "escalated", ...)."""
        what = None
        if inc.status == "firing":
            if finding:
                inc.streak += 1
                if finding.severity != inc.severity:
                    what = "escalated" if finding.severity == "critical" else "eased"
                    inc.severity = finding.severity
                elif rule.renotify and snap.start - inc.notified_at >= rule.renotify:
                    what = "reminder"
                inc.finding = asdict(finding)
            else:
                # Hysteresis: resolve only once past the clear line, not merely back over the target.
                clear_lines = [rule.clear if name == "target" and rule.clear is not None else line for name, line in lines]
                if all(not _bad_side(value, line, direction) for line in clear_lines):
                    inc.status, inc.streak, inc.resolved_at = "ok", 0, snap.end
                    if inc.finding:
                        inc.finding.update(status="resolved", value=value, baseline=baseline, interval=interval)
                    what = "resolved"
        elif finding:
            inc.streak += 1
            cooling = inc.resolved_at is not None and snap.end - inc.resolved_at < rule.cooldown
            inc.finding = asdict(finding)
            # may_open False: another group's incident stands for this breach (root_causes).
            if inc.streak >= rule.for_windows and not cooling and may_open:
                inc.status, inc.severity, inc.notified_at = "firing", finding.severity, snap.start
                what = "opened"
            else:
                inc.status = "pending"
        else:
            inc.status, inc.streak = "ok", 0
        self.incidents[ikey] = inc
        self._dirty.add(("i", *ikey))
        return what

    def _thread_event(self, tkey: tuple[Any, ...], what: dict[str, str], snap: Snapshot,
                      extra: dict[str, Any] | None = None) -> AlertEvent | None:
        thread = self.threads.get(tkey) or Thread()
        wi, bi, group = tkey
        before = list(thread.firing or [])
        firing = sorted({k for k in before if what.get(k) not in ("resolved", "withdrawn")} | {k for k, w in what.items() if w == "opened"})
        resolved = [k for k in before if what.get(k) in ("resolved", "withdrawn")]
        if not before and not firing:
            return None  # pending incidents, or resolves of nothing
        if not before:
            kind = "opened"
        elif not firing:
            kind = "withdrawn" if all(what.get(k) == "withdrawn" for k in resolved) else "resolved"
        elif firing != before or any(w in ("escalated", "eased") for w in what.values()):
            kind = "updated"
        elif any(w == "reminder" for w in what.values()):
            kind = "reminder"
        else:
            return None
        thread.seq += 1
        thread.firing = firing
        self.threads[tkey] = thread
        self._dirty.add(("t", *tkey))
        for k in firing:
            if k in what and what[k] in ("opened", "reminder", "escalated"):
                self._touch(k, wi, bi, group, snap.start)
        findings = [Finding.from_json(self._incident(k, wi, bi, group).finding or {}) for k in [*firing, *resolved]]
        severities = [f.severity for f in findings if f.status == "firing"] or [f.severity for f in findings]
        channel, mention = self._route(snap.group, [f.kpi for f in findings])
        if kind == "opened":
            extra = {**(extra or {}), "history": self.recent(wi, bi, group, firing)}
        return AlertEvent(
            thread="|".join([self.plan.windows[wi].name, breakdown_name(snap.dims), *group]),
            seq=thread.seq, kind=kind, window=snap.window, start=snap.start, end=snap.end, dims=snap.dims,
            group=dict(snap.group), severity="critical" if "critical" in severities else "warning",
            findings=findings, channel=channel, mention=mention, grafana_url=self._grafana(snap), extra=extra or {},
        )

    def _incident(self, kpi: str, wi: int, bi: int, group: Group) -> Incident:
        return self.incidents[(kpi, wi, bi, group)]

    def _touch(self, kpi: str, wi: int, bi: int, group: Group, start: int) -> None:
        self._incident(kpi, wi, bi, group).notified_at = start
        self._dirty.add(("i", kpi, wi, bi, group))

    # -- baselines -------------------------------------------------------------

    def _expect(self, kpi: str, wi: int, bi: int, group: Group, rule: Target, start: int, num: float, den: float) -> Expectation | None:
        """The seasonal baseline's expectation for this window (None: not seasonal, or still warming up)."""
        drift = rule.drift
        if drift is None or drift.baseline != "seasonal":
            return None
        model = self.seasonal.get((kpi, wi, bi, group))
        if model is None:
            return None
        hour, day = local_hour_and_day(start, self.tz)
        first = model.expect(hour, day, warmup=drift.warmup)
        if first is None or kpi not in self.proportions or den <= 0 or not 0 < first.centre < 1:
            return first
        # A proportion of few trials is noisier than the baseline's usual spread: its sampling
        # variance (binomial, around the expected rate; delta method in log space) widens the range.
        p = first.centre
        return model.expect(hour, day, warmup=drift.warmup, sampling_var=(1 - p) / (den * p))

    def expected_range(self, kpi: str, snap: Snapshot) -> tuple[float, float] | None:
        """The expected range a seasonal drift rule would judge this window's KPI by (for charts)."""
        if kpi not in self.rules:
            return None
        k, target = self.rules[kpi]
        rule = target.rule_for(snap.group)
        if rule.drift is None:
            return None
        wi = next(i for i, w in enumerate(self.plan.windows) if w.name == snap.window)
        num, _, den, _ = k.volume(snap.measures, snap.previous)
        e = self._expect(kpi, wi, self.plan.breakdowns.index(snap.dims), tuple(snap.group[d] for d in snap.dims),
                         rule, snap.start, num, den)
        return e.range(rule.drift.confidence) if e else None

    @staticmethod
    def _seasonal_breach(e: Expectation, rule: Target, value: float, direction: str, prev_z: float | None) -> tuple[float, str] | None:
        """(the line crossed, the side's direction) if the value is drift.

        A spike: outside the expected range at the rule's confidence. A sustained shift: this
        window and the one before on the same side, whose evidence together ((z₁ + z₂)/√2, as
        for one window of twice the data) is outside it; the line is then what this window had
        to pass given the one before. Either way also at least ``change`` from the expectation.
        """
        drift = rule.drift
        assert drift is not None
        limit = e.limit(drift.confidence)
        both = drift.sides == "both" or direction not in ("higher", "lower")
        for side, sign in (("higher", -1), ("lower", 1)):
            if not (direction == side or both) or sign * (value / e.centre - 1) < drift.change:
                continue
            need = limit  # in spreads from the expectation, on this side
            if prev_z is not None and sign * prev_z > 0:
                need = min(limit, max(limit * math.sqrt(2) - sign * prev_z, limit / 2))
            line = e.at(sign * need)
            if sign * (value - line) > 0:
                return line, side
        return None

    def _baseline(self, kpi: str, wi: int, bi: int, group: Group, rule: Target, start: int) -> float | None:
        drift = rule.drift
        b = self.baselines.get((kpi, wi, bi, group))
        if drift is None or b is None:
            return None
        if drift.baseline == "week":
            row = next((r for r in b.rows if r[0] == start - WEEK_MS), None)
            return None if row is None else row[3]
        if drift.method == "ewma":
            return b.ewma
        rows = [r for r in b.rows if r[0] < start][-drift.windows :]
        if len(rows) < drift.windows:
            return None  # not enough history to call anything a drift
        if self.rules[kpi][0].kpi.ratio:
            den = sum(r[2] for r in rows)
            return sum(r[1] for r in rows) / den * self.rules[kpi][0].kpi.scale if den else None
        return sum(r[3] for r in rows) / len(rows)

    def _remember(self, kpi: str, wi: int, bi: int, group: Group, rule: Target, start: int,
                  num: float, den: float, value: float | None, *, again: bool = False) -> None:
        drift = rule.drift
        if drift is None or value is None:
            return
        key = (kpi, wi, bi, group)
        if drift.baseline == "seasonal":
            model = self.seasonal.get(key) or Seasonal()
            n = model.n
            model.learn(start, *local_hour_and_day(start, self.tz), value)
            if model.n != n:
                self.seasonal[key] = model
                self._dirty.add(("s", *key))
            return
        b = self.baselines.get(key) or Baseline([])
        if again and b.rows and b.rows[-1][0] == start:
            b.rows[-1] = [start, num, den, value]  # a revised window: its row takes the revised values
            self._dirty.add(("b", *key))
            return
        if b.rows and b.rows[-1][0] >= start:
            return  # already remembered
        b.rows.append([start, num, den, value])
        keep_from = start - WEEK_MS if drift.baseline == "week" else None
        b.rows = [r for r in b.rows if r[0] >= keep_from] if keep_from is not None else b.rows[-drift.windows :]
        b.ewma = value if b.ewma is None else drift.alpha * value + (1 - drift.alpha) * b.ewma
        self.baselines[key] = b
        self._dirty.add(("b", *key))

    # -- contributors, routes, links -------------------------------------------

    def _contributor(self, k: KpiPlan, snap: Snapshot, kids: Children, ref: float | None) -> Contributor | None:
        """The sub-group (one dimension finer) that pulled the KPI furthest to its bad side."""
        if ref is None:
            return None
        _, _, parent_den, _ = k.volume(snap.measures, snap.previous)
        best: Contributor | None = None
        for dim, sub in kids.get((snap.dims, tuple(snap.group[d] for d in snap.dims)), ()):
            value = sub.kpis.get(k.name)
            if value is None:
                continue
            _, _, den, _ = k.volume(sub.measures, sub.previous)
            bad = (ref - value) if k.kpi.direction == "higher" else (value - ref)
            impact = bad * den
            if impact > 0 and (best is None or impact > best.impact):
                best = Contributor(dim, sub.group[dim], value, den / parent_den if parent_den else 0.0, impact)
        return best

    def _children(self, batch: list[Snapshot]) -> Children:
        """The window's groups by their parents one dimension coarser: (dims, group) -> [(the extra dim, snapshot)]."""
        kids: Children = {}
        for sub in batch:
            for dim in sub.dims:
                parent = tuple(d for d in sub.dims if d != dim)
                if parent in self._breakdown_set:
                    kids.setdefault((parent, tuple(sub.group[d] for d in parent)), []).append((dim, sub))
        return kids

    # -- root causes -------------------------------------------------------------

    def _root_causes(self, tests: list[Test]) -> None:
        """One incident per root cause, among a window's discoveries of each KPI.

        A discovery explained by a finer group that breaches its own line and accounts for most
        of its shortfall (more than ``EXPLAINS``, and more than twice any other breaching group of
        its breakdown within it: campaign X on iOS for campaign X, the channel and the total) opens no incident of its own: the finest group down that chain does, with the
        wider breaches listed in its message. The finer group need not be a discovery itself:
        the wider discovery is the evidence, the finer group is where it lies. A breach inside
        a wider discovery that no finer group explains (the campaign dropped on every device)
        belongs to the widest such. Shortfalls are (reference − value) × volume, which add up over the groups that
        partition a wider one, so "share" is the part of its shortfall a group accounts for.
        """
        breaching: dict[tuple[str, int], dict[tuple[Any, ...], Test]] = {}
        for t in tests:
            if t.breach is not None:
                breaching.setdefault((t.kpi, t.ikey[1]), {})[(t.snap.dims, t.ikey[3])] = t
        for (kpi, wi), by_group in breaching.items():
            found = [t for t in by_group.values() if t.finding is not None]
            if not found:
                continue
            # Each breach's best explainer among the breaches inside it (looked up by the wider
            # groups a breach lies in: its breakdown's coarser breakdowns).
            inside: dict[int, list[Test]] = {}
            for narrow in by_group.values():
                for dims in self._coarser[narrow.snap.dims]:
                    wide = by_group.get((dims, tuple(narrow.snap.group[d] for d in dims)))
                    if wide is not None:
                        inside.setdefault(id(wide), []).append(narrow)
            explained: dict[int, tuple[Test, float]] = {}

            def explainer(wide: Test) -> tuple[Test, float] | None:
                if id(wide) not in explained:
                    best = None
                    within = inside.get(id(wide), ())
                    for narrow in within:
                        share = _shortfall(narrow) / _shortfall(wide) if _shortfall(wide) > 0 else 0.0
                        # Not when a sibling breaches nearly as much: that is a wider problem (every device).
                        dominant = all(2 * _shortfall(o) < _shortfall(narrow) for o in within if o is not narrow and o.snap.dims == narrow.snap.dims)
                        if share > EXPLAINS and dominant and (best is None or (share, len(narrow.snap.dims)) > (best[1], len(best[0].snap.dims))):
                            best = (narrow, share)
                    explained[id(wide)] = best  # type: ignore[assignment]
                return explained[id(wide)]

            owners: dict[int, Test] = {}
            for t in found:
                owner, seen = t, {id(t)}
                while (step := explainer(owner)) is not None and id(step[0]) not in seen:
                    owner = step[0]
                    seen.add(id(owner))
                owners[id(t)] = owner
            roots = {id(o): o for o in owners.values()}
            for t in found:
                owner = owners[id(t)]
                wider = [r for r in roots.values() if r is not owner and _inside(owner.snap, r.snap)]
                if wider:
                    owner = min(wider, key=lambda r: (len(r.snap.dims), r.ikey))
                if owner is t:
                    continue
                t.may_open = False
                if owner.finding is None:  # located by a wider discovery: its incident rests on that evidence
                    owner.finding = owner.breach
                    assert owner.finding is not None
                    owner.finding.q_value = t.finding.q_value if t.finding else None
                elif t.finding is not None and t.finding.q_value is not None and owner.finding.q_value is not None:
                    owner.finding.q_value = min(owner.finding.q_value, t.finding.q_value)
                wide = not _inside(t.snap, owner.snap)
                share = (_shortfall(owner) / _shortfall(t) if wide else _shortfall(t) / _shortfall(owner)) if min(_shortfall(owner), _shortfall(t)) > 0 else 0.0
                owner.finding.explains = [*(owner.finding.explains or []), {
                    "breakdown": breakdown_name(t.snap.dims), "group": dict(t.snap.group), "value": t.value,
                    "share": min(share, 1.0), "wider": wide,
                }]

    def _route(self, group: dict[str, str], kpis: list[str]) -> tuple[str | None, str | None]:
        return self.plan.config.alerting.route(group, kpis)

    def _grafana(self, snap: Snapshot) -> str | None:
        base = self.plan.config.alerting.grafana_url
        if not base:
            return None
        params = {"var-window": snap.window, **{f"var-{d}": v for d, v in snap.group.items()}, "from": snap.start - 12 * (snap.end - snap.start), "to": snap.end}
        return f"{base}{'&' if '?' in base else '?'}{urlencode(params)}"

    # -- no data ---------------------------------------------------------------

    def _no_data(self, wi: int, start: int, snapshots: list[Snapshot], changed: dict[tuple[Any, ...], dict[str, str]],
                 contexts: dict[tuple[Any, ...], Snapshot]) -> None:
        nd = self.no_data
        assert nd is not None
        window = self.plan.windows[wi]
        step = window.step or window.size
        seen: set[tuple[Any, ...]] = set()
        for snap in snapshots:
            bi = self.plan.breakdowns.index(snap.dims)
            if bi not in self._no_data_breakdowns:
                continue
            group = tuple(snap.group[d] for d in snap.dims)
            if any(snap.measures.get(m, 0) > 0 for m in nd.measures):
                key = (wi, bi, group)
                seen.add(key)
                self.active[key] = start
                self._dirty.add(("n", *key))
                inc = self.incidents.get((NO_DATA, wi, bi, group))
                if inc and inc.status == "firing":
                    inc.status, inc.resolved_at = "ok", snap.end
                    if inc.finding:
                        inc.finding.update(status="resolved")
                    self._dirty.add(("i", NO_DATA, wi, bi, group))
                    changed.setdefault(key, {})[NO_DATA] = "resolved"
                    contexts[key] = snap
        for key, last in list(self.active.items()):
            if key[0] != wi or key in seen or start - last < nd.windows * step:
                continue
            _, bi, group = key
            ikey = (NO_DATA, wi, bi, group)
            inc = self.incidents.get(ikey) or Incident()
            if inc.status == "firing":
                continue
            dims = self.plan.breakdowns[bi]
            snap = Snapshot(window.name, start, start + window.size, dims, dict(zip(dims, group)), EVENTS, {}, {})
            names = "/".join(nd.measures)
            finding = Finding(
                kpi=NO_DATA, rule=NO_DATA, severity="critical", value=0.0, threshold=None, target=None, baseline=None,
                direction="higher", unit="count", numerator=0.0, numerator_name=names, denominator=float(nd.windows),
                denominator_name="windows", interval=None, contributor=None,
            )
            inc.status, inc.severity, inc.notified_at, inc.finding = "firing", "critical", start, asdict(finding)
            self.incidents[ikey] = inc
            self._dirty.add(("i", *ikey))
            changed.setdefault(key, {})[NO_DATA] = "opened"
            contexts[key] = snap

    # -- stale feeds -----------------------------------------------------------

    def check_feeds(self, fast: int, reported: dict[str, int]) -> list[AlertEvent]:
        """One thread per delayed event type: opened when the type has reported (``reported``,
        event time) more than its ``delay`` behind the fast streams (``fast``), resolved when it
        is back within it. A type that never reported is not judged (no such feed here).

        Run by one stage-2 partition only, so each feed has one thread.
        """
        events = []
        for etype in sorted(self.plan.delayed):
            at = reported.get(etype, NEVER)
            if at <= NEVER or fast <= NEVER:
                continue
            delay = self.plan.arrival[etype].delay
            behind = fast - at
            inc = self.feeds.get(etype) or Incident()
            if inc.status != "firing" and behind > delay:
                what = "opened"
                inc.status, inc.severity = "firing", "warning"
            elif inc.status == "firing" and behind <= delay:
                what, inc.status, inc.resolved_at = "resolved", "ok", fast
            else:
                continue
            finding = Finding(
                kpi=f"{etype} feed", rule=STALE, severity="warning", value=behind / 1000, threshold=delay / 1000, target=None,
                baseline=None, direction="lower", unit="seconds", numerator=at / 1000, numerator_name=f"{etype} reported up to",
                denominator=fast / 1000, denominator_name="fast streams at", status="firing" if what == "opened" else "resolved",
            )
            inc.finding = asdict(finding)
            inc.notified_at = fast
            self.feeds[etype] = inc
            seq = self.feed_seq.get(etype, 0) + 1
            self.feed_seq[etype] = seq
            self._dirty.add(("f", etype))
            group = {"feed": etype}
            channel, mention = self._route(group, [finding.kpi])
            events.append(AlertEvent(
                thread=f"feed|{etype}", seq=seq, kind=what, window="feed", start=at, end=fast, dims=("feed",), group=group,
                severity="warning", findings=[finding], channel=channel, mention=mention,
            ))
        return events

    # -- persistence -----------------------------------------------------------

    def changes(self) -> list[Change]:
        """State written since the last call (value None deletes)."""
        return drain(self._dirty, set(), self._value)

    def _value(self, key: tuple[Any, ...]) -> Any:
        kind, rest = key[0], key[1:]
        if kind == "i":
            return asdict(self.incidents[rest])
        if kind == "t":
            return asdict(self.threads[rest])
        if kind == "b":
            return asdict(self.baselines[rest])
        if kind == "s":
            return self.seasonal[rest].to_json()
        if kind == "f":
            return {"incident": asdict(self.feeds[rest[0]]), "seq": self.feed_seq[rest[0]]}
        if kind == "r":
            start, measures = self.references[rest]
            return {"start": start, "measures": measures}
        return self.active[rest]

    def load(self, key: str, value: Any) -> None:
        parts = orjson.loads(key)
        kind = parts[0]
        if kind == "i":
            kpi, wi, bi, group = parts[1:]
            self.incidents[(kpi, wi, bi, tuple(group))] = Incident(**value)
        elif kind == "t":
            wi, bi, group = parts[1:]
            self.threads[(wi, bi, tuple(group))] = Thread(**value)
        elif kind == "b":
            kpi, wi, bi, group = parts[1:]
            self.baselines[(kpi, wi, bi, tuple(group))] = Baseline(**value)
        elif kind == "s":
            kpi, wi, bi, group = parts[1:]
            self.seasonal[(kpi, wi, bi, tuple(group))] = Seasonal.from_json(value)
        elif kind == "r":
            kpi, wi, bi, group = parts[1:]
            self.references[(kpi, wi, bi, tuple(group))] = (value["start"], value["measures"])
        elif kind == "f":
            self.feeds[parts[1]] = Incident(**value["incident"])
            self.feed_seq[parts[1]] = value["seq"]
        else:
            wi, bi, group = parts[1:]
            self.active[(wi, bi, tuple(group))] = value

    def firing(self) -> dict[tuple[Any, ...], Incident]:
        """Incidents currently firing, for the ``kpimon_alert_firing`` gauge."""
        return {k: v for k, v in self.incidents.items() if v.status == "firing"}
