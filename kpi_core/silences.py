"""Silences: "don't tell anyone about campaign X's CTR for the next 2 hours".

A silence mutes alert delivery for the groups and KPIs its matchers select, between
``starts_at`` and ``ends_at`` (epoch ms, end exclusive). Matchers name breakdown
dimensions (``campaign``, ``channel``, ``device``...) and, under the reserved key
``kpi``, the KPI; each value is exact or an ``fnmatch`` glob (``spring-*``). Every
matcher must match: a matcher on a dimension the group doesn't have does not match,
so a campaign silence leaves the channel and grand totals alone.

Silences live in a compacted Kafka topic keyed by id; ``SilenceSet`` folds that
topic's records (latest value per key wins, a null value deletes) into the current
set. Nothing here does I/O: the clock is always passed in.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from kpi_core.errors import KpimonError

KPI = "kpi"  # the matcher key that selects KPIs rather than a breakdown dimension
_FIELDS = ("id", "matchers", "starts_at", "ends_at", "reason", "created_by")


class InvalidSilence(KpimonError):
    """A silence is malformed: no matcher, an empty reason, or an end not after its start."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason  # a short, bounded code: safe as a log field or metric label
        self.detail = detail
        super().__init__(detail)


class UnknownSilence(KpimonError):
    """No silence has this id; ``kpimon silence list --all`` shows every id."""

    def __init__(self, silence_id: str) -> None:
        self.silence_id = silence_id
        super().__init__(f"no silence with id {silence_id!r}; `kpimon silence list --all` shows every id")


@dataclass(frozen=True, slots=True)
class Silence:
    """One silence: which groups and KPIs it mutes, and when."""

    id: str
    matchers: dict[str, str]
    starts_at: int  # epoch ms, inclusive
    ends_at: int  # epoch ms, exclusive
    reason: str
    created_by: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise InvalidSilence("missing_id", "a silence needs an id")
        if not isinstance(self.matchers, dict):
            raise InvalidSilence("bad_matcher", f"matchers must map dimensions to values, got {self.matchers!r}")
        if not self.matchers:
            raise InvalidSilence(
                "no_matcher", "a silence needs at least one matcher (--campaign, --channel, --kpi or --match DIM=VALUE)"
            )
        for dim, pattern in self.matchers.items():
            if not isinstance(dim, str) or not dim.strip():
                raise InvalidSilence("bad_matcher", f"matcher dimension must be a non-empty string, got {dim!r}")
            if not isinstance(pattern, str) or not pattern:
                raise InvalidSilence("bad_matcher", f"matcher {dim} needs a non-empty value, got {pattern!r}")
        for name in ("starts_at", "ends_at"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidSilence("bad_time", f"{name} must be epoch milliseconds (an integer), got {value!r}")
        if self.ends_at <= self.starts_at:
            raise InvalidSilence("bad_time", f"ends_at ({self.ends_at}) must be after starts_at ({self.starts_at})")
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise InvalidSilence("no_reason", "a silence needs a reason, so others know why alerts are muted")
        if not isinstance(self.created_by, str):
            raise InvalidSilence("bad_field", f"created_by must be a string, got {self.created_by!r}")
        # A private, sorted copy: the caller's dict can't change a frozen silence, and lists read the same.
        object.__setattr__(self, "matchers", dict(sorted(self.matchers.items())))

    def is_active(self, at_ms: int) -> bool:
        """Whether the silence is in force at ``at_ms``: start inclusive, end exclusive."""
        return self.starts_at <= at_ms < self.ends_at

    def state(self, at_ms: int) -> str:
        """``pending`` (not started), ``active`` or ``expired`` at ``at_ms``."""
        if at_ms < self.starts_at:
            return "pending"
        return "active" if at_ms < self.ends_at else "expired"

    def selects(self, group: Mapping[str, str], kpi: str) -> bool:
        """Whether every matcher matches this group and KPI, ignoring time."""
        for dim, pattern in self.matchers.items():
            value = kpi if dim == KPI else group.get(dim)
            if value is None:
                return False  # the group has no such dimension: a campaign silence is not a total's
            if value != pattern and not fnmatch.fnmatchcase(value, pattern):
                return False
        return True

    def matches(self, group: Mapping[str, str], kpi: str, at_ms: int) -> bool:
        """Whether this silence mutes ``kpi`` of ``group`` at ``at_ms`` (the delivery decision's wall clock)."""
        return self.is_active(at_ms) and self.selects(group, kpi)

    def expired(self, at_ms: int) -> Silence:
        """This silence ended by ``at_ms``: the record ``kpimon silence expire`` writes.

        An already expired silence keeps its end. One that has not started yet gets a
        1 ms window just before ``at_ms``: the record stays valid (end after start) and,
        lying in the past, can mute nothing.
        """
        ends_at = min(self.ends_at, at_ms)
        return replace(self, starts_at=min(self.starts_at, ends_at - 1), ends_at=ends_at)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS} | {"matchers": dict(self.matchers)}

    @classmethod
    def from_json(cls, raw: Any) -> Silence:
        """Build a silence from its JSON object; unknown keys are ignored so newer writers can add fields."""
        if not isinstance(raw, dict):
            raise InvalidSilence("not_an_object", f"a silence is a JSON object, got {type(raw).__name__}")
        missing = [name for name in _FIELDS if name != "created_by" and name not in raw]
        if missing:
            raise InvalidSilence("missing_field", f"silence record lacks {', '.join(missing)}")
        return cls(**{name: raw[name] for name in _FIELDS if name in raw})

    def to_bytes(self) -> bytes:
        """The record value on the silences topic."""
        return orjson.dumps(self.to_json())

    def describe(self) -> str:
        """The matchers as ``campaign=spring-* kpi=ctr``."""
        return " ".join(f"{dim}={pattern}" for dim, pattern in self.matchers.items())


class SilenceSet:
    """The current silences, by id: the fold of the silences topic."""

    def __init__(self, silences: Iterable[Silence] = ()) -> None:
        self._by_id: dict[str, Silence] = {s.id: s for s in silences}

    def apply(self, key: str | bytes | None, value: bytes | None) -> str | None:
        """Apply one record of the topic; return None, or why the record was ignored.

        The latest value for a key replaces the previous one and a null value (a
        tombstone) deletes it. A bad record changes nothing: the caller logs the reason.
        """
        if isinstance(key, bytes):
            try:
                key = key.decode()
            except UnicodeDecodeError:
                return f"invalid_key: record key {key!r} is not UTF-8"
        if not key:
            return "missing_key: silence records are keyed by their id"
        if value is None:
            self._by_id.pop(key, None)
            return None
        try:
            silence = Silence.from_json(orjson.loads(value))
        except orjson.JSONDecodeError as exc:
            return f"invalid_json: {exc}"
        except InvalidSilence as exc:
            return f"{exc.reason}: {exc.detail}"
        if silence.id != key:
            return f"key_mismatch: record key {key!r} holds silence {silence.id!r}"
        self._by_id[key] = silence
        return None

    def get(self, silence_id: str) -> Silence | None:
        return self._by_id.get(silence_id)

    def all(self) -> list[Silence]:
        """Every silence, expired ones too, by start then id."""
        return sorted(self._by_id.values(), key=lambda s: (s.starts_at, s.id))

    def active(self, at_ms: int) -> list[Silence]:
        """The silences in force at ``at_ms``, by start then id."""
        return [s for s in self.all() if s.is_active(at_ms)]

    def is_silenced(self, group: Mapping[str, str], kpi: str, at_ms: int) -> Silence | None:
        """The silence muting ``kpi`` of ``group`` at ``at_ms``, or None.

        When several match, the one that ends last: it says how long the mute lasts.
        """
        found = [s for s in self._by_id.values() if s.matches(group, kpi, at_ms)]
        return max(found, key=lambda s: (s.ends_at, s.id)) if found else None

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Silence]:
        return iter(self.all())

    def __contains__(self, silence_id: object) -> bool:
        return silence_id in self._by_id
