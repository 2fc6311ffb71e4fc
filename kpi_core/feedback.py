"""What people said about incidents from Slack: acknowledge, snooze, silence, false alarm.

A click on one of an incident message's buttons becomes a ``Click``; ``decide`` says what
must happen for it (records for the feedback topic, a silence, the refusal to show a user
outside the allowed list) and ``FeedbackSet`` folds the feedback topic into what each
incident's message shows and what the quality metrics count. Nothing here does I/O.

The feedback topic is compacted and keyed so that repeats collapse:

- ``click|<incident>|<action>|<action_ts>|<user>``: one click. Slack delivers a click again
  (no acknowledgement in time, a worker killed) with the same ``action_ts``: the same key,
  the same value, so one effect however often it is written.
- ``incident|<incident>``: an incident shown to people (its opening was delivered), with its
  rules: the denominator of a rule's precision.

An incident is a thread's opening event id (``<thread>#<seq>``): a thread (one group's
incidents of one window size) opens again after it resolves, and each opening is a new
incident with a new message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from kpi_core.errors import KpimonError
from kpi_core.incidents import AlertEvent
from kpi_core.silences import Silence

ACK, SNOOZE, SILENCE, FALSE_ALARM = "ack", "snooze", "silence", "false_alarm"
ACTIONS = (ACK, SNOOZE, SILENCE, FALSE_ALARM)
#: kpimon_alert_feedback_total{verdict}: what each action says about the alert.
VERDICTS = {ACK: "acknowledged", SNOOZE: "snoozed", SILENCE: "silenced", FALSE_ALARM: "false_alarm"}
ACTION_PREFIX = "kpimon_"  # a button's action_id is kpimon_<action>: other apps' buttons are not ours
SILENCE_MS = 24 * 3_600_000
MAX_VALUE = 2000  # Slack's limit on a button's value: a longer one gets no buttons


class InvalidClick(KpimonError):
    """A payload that claims to be a kpimon button but cannot be read (a stale or forged message)."""


@dataclass(frozen=True, slots=True)
class Ref:
    """What a button carries about its incident (its ``value``): enough to act without other state."""

    incident: str
    thread: str
    group: dict[str, str]
    kpis: tuple[str, ...]
    rules: tuple[str, ...]

    @classmethod
    def of(cls, event: AlertEvent, incident: str) -> Ref:
        firing = [f for f in event.findings if f.status == "firing"] or event.findings
        return cls(incident, event.thread, dict(event.group), tuple(sorted({f.kpi for f in firing})),
                   tuple(sorted({f.rule for f in event.findings})))

    def to_json(self) -> dict[str, Any]:
        """The incident's part of a feedback record (clicks and ``incident|`` records alike)."""
        return {"incident": self.incident, "thread": self.thread, "group": self.group, "kpis": list(self.kpis), "rules": list(self.rules)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Ref:
        return cls(str(raw["incident"]), str(raw["thread"]), dict(raw.get("group") or {}), tuple(raw.get("kpis") or ()),
                   tuple(raw.get("rules") or ()))

    def to_value(self) -> str:
        """The button's value (Slack allows ``MAX_VALUE`` characters); the thread is the incident's prefix."""
        return orjson.dumps({"i": self.incident, "g": self.group, "k": self.kpis, "r": self.rules}).decode()

    @classmethod
    def from_value(cls, value: Any) -> Ref:
        try:
            raw = orjson.loads(value)
            incident = str(raw["i"])
            ref = cls(incident, incident.rsplit("#", 1)[0], {str(k): str(v) for k, v in raw["g"].items()},
                      tuple(str(k) for k in raw["k"]), tuple(str(r) for r in raw["r"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidClick(f"the button's value is not a kpimon incident ({type(exc).__name__})") from None
        if "#" not in ref.incident or not ref.thread:
            raise InvalidClick("the button's value names no incident")
        return ref


@dataclass(frozen=True, slots=True)
class Click:
    """One button click, as Slack reported it."""

    ref: Ref
    action: str
    user: str
    at: int  # epoch ms: Slack's action_ts, the same in every delivery of this click
    action_ts: str
    channel: str  # where the message is: its channel ID and ts, to edit it
    ts: str

    @property
    def key(self) -> str:
        return f"click|{self.ref.incident}|{self.action}|{self.action_ts}|{self.user}"

    def to_json(self) -> dict[str, Any]:
        return {**self.ref.to_json(), "action": self.action, "user": self.user, "at": self.at,
                "action_ts": self.action_ts, "channel": self.channel, "ts": self.ts}


def parse_click(payload: Mapping[str, Any]) -> Click | None:
    """The kpimon click in a ``block_actions`` payload; None for anything else (another app's button).

    Raises ``InvalidClick`` for a kpimon button whose payload cannot be read.
    """
    if payload.get("type") != "block_actions":
        return None
    actions = payload.get("actions") or []
    action = next((a for a in actions if isinstance(a, dict) and str(a.get("action_id", "")).startswith(ACTION_PREFIX)), None)
    if action is None:
        return None
    name = str(action["action_id"]).removeprefix(ACTION_PREFIX)
    if name not in ACTIONS:
        raise InvalidClick(f"unknown kpimon action {name!r}")
    user = (payload.get("user") or {}).get("id")
    container = payload.get("container") or {}
    channel = container.get("channel_id") or (payload.get("channel") or {}).get("id")
    ts = container.get("message_ts")
    action_ts = action.get("action_ts")
    if not (user and channel and ts and action_ts):
        raise InvalidClick("the payload lacks the user, channel, message or action time")
    try:
        at = int(float(action_ts) * 1000)
    except ValueError:
        raise InvalidClick(f"action_ts {action_ts!r} is not a Slack timestamp") from None
    ref = Ref.from_value(action.get("value"))
    if name == SILENCE and not ref.group:
        # A silence selects by matchers: one on the KPI alone would mute it in every group too.
        raise InvalidClick("the total (all traffic) has no Silence button: use `kpimon silence add --kpi`")
    return Click(ref, name, str(user), at, str(action_ts), str(channel), str(ts))


@dataclass(frozen=True, slots=True)
class Mark:
    """Who did something to an incident, and when (epoch ms)."""

    user: str
    at: int


@dataclass(slots=True)
class IncidentFeedback:
    """An incident's feedback: per action, its first click (later ones change nothing)."""

    ref: Ref | None = None
    marks: dict[str, Mark] = field(default_factory=dict)

    def add(self, action: str, mark: Mark) -> None:
        old = self.marks.get(action)
        if old is None or (mark.at, mark.user) < (old.at, old.user):
            self.marks[action] = mark

    @property
    def quiet(self) -> bool:
        """No reminders or updates: snoozed until it recovers, or closed as a false alarm."""
        return SNOOZE in self.marks or FALSE_ALARM in self.marks


class FeedbackSet:
    """The fold of the feedback topic: every incident's feedback, and the counts the metrics show."""

    def __init__(self) -> None:
        self._incidents: dict[str, IncidentFeedback] = {}
        self._clicks: set[str] = set()

    def apply(self, key: str | bytes | None, value: bytes | None) -> str | None:
        """Apply one record of the topic; return None, or why the record was ignored."""
        if isinstance(key, bytes):
            key = key.decode(errors="replace")
        if not key or value is None:
            return None if key else "missing_key: feedback records are keyed"
        kind = key.split("|", 1)[0]
        if kind not in ("incident", "click"):
            return f"unknown_record: {kind!r}"
        try:
            raw = orjson.loads(value)
            ref = Ref.from_json(raw)
            mark = Mark(str(raw["user"]), int(raw["at"])) if kind == "click" else None
            action = raw["action"] if kind == "click" else None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            return f"invalid_record: {type(exc).__name__}"
        if action is not None and action not in ACTIONS:
            return f"unknown_action: {action!r}"
        fb = self._incidents.setdefault(ref.incident, IncidentFeedback())
        fb.ref = fb.ref or ref  # an ``incident|`` record brings only this: the incident counts in precision
        if mark is not None:
            fb.add(action, mark)
            self._clicks.add(key)
        return None

    def get(self, incident: str | None) -> IncidentFeedback:
        return self._incidents.get(incident or "") or IncidentFeedback()

    def knows(self, click: Click) -> bool:
        return click.key in self._clicks

    def counts(self) -> dict[tuple[str, str], int]:
        """(rule, verdict) -> incidents with that verdict: each incident once, whatever the clicks."""
        out: dict[tuple[str, str], int] = {}
        for fb in self._incidents.values():
            for action in fb.marks:
                for rule in fb.ref.rules if fb.ref else ():
                    key = (rule, VERDICTS[action])
                    out[key] = out.get(key, 0) + 1
        return out

    def precision(self) -> dict[str, float]:
        """Per rule: incidents not marked a false alarm ÷ incidents (shown, or clicked on)."""
        total: dict[str, int] = {}
        false: dict[str, int] = {}
        for fb in self._incidents.values():
            for rule in fb.ref.rules if fb.ref else ():
                total[rule] = total.get(rule, 0) + 1
                false[rule] = false.get(rule, 0) + (FALSE_ALARM in fb.marks)
        return {rule: (n - false[rule]) / n for rule, n in total.items()}

    def __len__(self) -> int:
        return len(self._incidents)


@dataclass(frozen=True, slots=True)
class Decision:
    """What must happen for one click, in this order: write ``silences`` (what a recorded click
    promises must exist), write ``records``, edit the message to show ``feedback``; or, when
    refused, only tell the user ``refusal``."""

    records: list[tuple[str, bytes]]
    silences: list[Silence]
    feedback: IncidentFeedback | None
    refusal: str | None = None


def allowed(user: str, users: Iterable[str], members: Iterable[str], *, restricted: bool) -> bool:
    """Whether ``user`` may click: anyone when no list is configured, else a listed user or group member."""
    return not restricted or user in set(users) or user in set(members)


def decide(click: Click, known: IncidentFeedback, *, permitted: bool, who: str = "") -> Decision:
    """The effects of one click given the incident's feedback so far.

    A repeat of a click already folded (``known``) decides the same records again: they
    carry the same keys and values, so writing them again changes nothing.
    """
    if not permitted:
        return Decision([], [], None, refusal=(
            f"Sorry, you are not allowed to act on kpimon alerts, so nothing was changed. {who}".strip()))
    fb = IncidentFeedback(click.ref, dict(known.marks))
    fb.add(click.action, Mark(click.user, click.at))
    records = [(click.key, orjson.dumps(click.to_json()))]
    silences = silences_for(click) if click.action == SILENCE else []
    return Decision(records, silences, fb)


def silences_for(click: Click) -> list[Silence]:
    """The 24-hour silence a click asks for: the incident's group (every KPI of it).

    Its id comes from the click, so a repeat writes the same silence.
    """
    ref = click.ref
    digest = hashlib.sha1(click.key.encode()).hexdigest()[:12]
    return [Silence(id=f"slack-{digest}", matchers=_exact(ref.group), starts_at=click.at, ends_at=click.at + SILENCE_MS,
                    reason=f"silenced from Slack on {ref.thread}", created_by=f"slack:{click.user}")]


def _exact(group: Mapping[str, str]) -> dict[str, str]:
    return {dim: _glob_literal(v) for dim, v in group.items()}


def _glob_literal(value: str) -> str:
    """A value as a glob that matches only itself (a campaign named ``sale[1]`` is not a pattern)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in value)


def incident_record(event: AlertEvent, incident: str, channel: str | None, ts: str | None) -> tuple[str, bytes]:
    """The ``incident|`` record written when an opening reaches people."""
    return f"incident|{incident}", orjson.dumps({**Ref.of(event, incident).to_json(), "channel": channel, "ts": ts, "at": event.start})
