"""The internal messages between stages, encoded with orjson.

Router → stage 1 (``<app>-events``): ``{"w": {source: max ts}, "b": [sources with a backlog], "t": sent at (epoch ms), "e": [[source, offset, type, ts, data], ...]}``
Dead letters (``dead-letters``): the input record as it was, with headers naming why and where from.
Stage 1 → stage 2 (``<app>-partials``): ``{"src": partition, "h": {pass: horizon}, "at": input position, "p": [[window, start, pass, breakdown, group, vector(, stale types)], ...]}``
(``h`` was one number before passes existed; stage 2 still reads that.) A revision's pass is
``"revision"`` and its vector the revisable slots only (kpi_core.aggregate).
"""

from __future__ import annotations

from typing import Any

import orjson

from kpi_core.aggregate import Partial
from kpi_core.errors import InvalidEvent
from kpi_core.plan import REVISION, Plan


#: A bundle stays well under Kafka's default 1 MB request and message size. A burst of a few
#: campaigns (a backlog caught up at once) would otherwise put a whole 10,000-event batch into
#: one partition's bundle, which the producer refuses, and the router would retry it forever.
MAX_BUNDLE_BYTES = 512 * 1024
#: A window's partials for one stage-2 partition are one message (stage 2 takes a second message
#: for the same window and source as a redelivery), so they may be large: ~400 bytes a group,
#: ~40,000 groups of one window per partition. The partials topic and the producer allow it.
MAX_PARTIALS_BYTES = 16 * 1024 * 1024


def encode_events(watermarks: dict[str, int], backlog: list[str], events: list[list[Any]], sent_at: float) -> bytes:
    return orjson.dumps({"w": watermarks, "b": backlog, "t": sent_at, "e": events})


def encode_bundles(before: dict[str, int], watermarks: dict[str, int], backlog: list[str], events: list[list[Any]],
                   sent_at: float, limit: int = MAX_BUNDLE_BYTES) -> list[bytes]:
    """One partition's events as bundles of at most ``limit`` bytes (a single event may be more), in order.

    Only the last bundle reports the batch's progress (``watermarks``). The others report
    ``before`` (the progress before the batch) with every source backlogged: stage 1 may
    close windows between two bundles, and must not close any that a later bundle of
    the same batch still adds to.
    """
    whole = encode_events(watermarks, backlog, events, sent_at)
    if len(whole) <= limit or len(events) <= 1:
        return [whole]
    chunks = _split(events, len(whole), limit)
    held = sorted(watermarks)
    return [*(encode_events({s: before.get(s, -1) for s in watermarks}, held, chunk, sent_at) for chunk in chunks[:-1]),
            encode_events(watermarks, backlog, chunks[-1], sent_at)]


def _split(events: list[list[Any]], size: int, limit: int) -> list[list[list[Any]]]:
    """Events in consecutive chunks that encode to about ``limit`` bytes or less each."""
    per = max(1, int(len(events) * limit / size * 0.9))  # events are similar in size; 10% to spare
    out: list[list[list[Any]]] = []
    for i in range(0, len(events), per):
        chunk = events[i : i + per]
        if len(chunk) > 1 and len(orjson.dumps(chunk)) > limit:
            out += _split(chunk, len(orjson.dumps(chunk)), limit)  # an unusually large stretch
        else:
            out.append(chunk)
    return out


def decode_events(raw: bytes) -> tuple[dict[str, int], set[str], float | None, list[list[Any]]]:
    obj = orjson.loads(raw)
    return obj["w"], set(obj["b"]), obj.get("t"), obj["e"]


def encode_partials(plan: Plan, source: int, horizon: dict[str, int], partials: list[Partial], at: int = 0) -> bytes:
    rows = [[p.window, p.start, p.phase, p.breakdown, p.group, p.vector if p.phase == REVISION else plan.encode(p.vector),
             *([list(p.stale)] if p.stale else [])]
            for p in partials]
    return orjson.dumps({"src": source, "h": horizon, "at": at, "p": rows})


def encode_judgement(source: int, horizons: dict[str, int], windows: list[list[Any]]) -> bytes:
    """A stage-2 partition's closed windows for the judge (kpi_core/judge.py), on the partials topic:
    ``windows`` are [window, start, phase, revision, [snapshot rows]]."""
    return orjson.dumps({"judge": source, "h": horizons, "w": windows})


def decode_stage2(plan: Plan, raw: bytes) -> tuple[str, Any]:
    """A partials-topic message: ("partials", decode_partials's tuple) or ("judgement", (source, horizons, windows))."""
    obj = orjson.loads(raw)
    if "judge" in obj:
        return "judgement", (obj["judge"], obj["h"], obj["w"])
    return "partials", _partials(plan, obj)


def decode_partials(plan: Plan, raw: bytes) -> tuple[int, dict[str, int] | int, list[Partial], int]:
    """(stage-1 partition, its horizons, partials, its input position when it sent them)."""
    return _partials(plan, orjson.loads(raw))


def _partials(plan: Plan, obj: dict[str, Any]) -> tuple[int, dict[str, int] | int, list[Partial], int]:
    return obj["src"], obj["h"], [Partial(w, s, ph, b, tuple(g), v if ph == REVISION else plan.decode(v), tuple(rest[0]) if rest else ())
                                  for w, s, ph, b, g, v, *rest in obj["p"]], obj.get("at", 0)


def dead_letter_headers(exc: InvalidEvent, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Why a record was refused and where it came from, as Kafka headers on its dead letter."""
    return [
        ("kpimon-reason", exc.reason.encode()),
        ("kpimon-detail", exc.detail.encode("utf-8", "replace")),
        ("kpimon-source-topic", topic.encode()),
        ("kpimon-source-partition", str(partition).encode()),
        ("kpimon-source-offset", str(offset).encode()),
    ]
