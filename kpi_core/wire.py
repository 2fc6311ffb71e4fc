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


def encode_events(watermarks: dict[str, int], backlog: list[str], events: list[list[Any]], sent_at: float) -> bytes:
    return orjson.dumps({"w": watermarks, "b": backlog, "t": sent_at, "e": events})


def decode_events(raw: bytes) -> tuple[dict[str, int], set[str], float | None, list[list[Any]]]:
    obj = orjson.loads(raw)
    return obj["w"], set(obj["b"]), obj.get("t"), obj["e"]


def encode_partials(plan: Plan, source: int, horizon: dict[str, int], partials: list[Partial], at: int = 0) -> bytes:
    rows = [[p.window, p.start, p.phase, p.breakdown, p.group, p.vector if p.phase == REVISION else plan.encode(p.vector),
             *([list(p.stale)] if p.stale else [])]
            for p in partials]
    return orjson.dumps({"src": source, "h": horizon, "at": at, "p": rows})


def decode_partials(plan: Plan, raw: bytes) -> tuple[int, dict[str, int] | int, list[Partial], int]:
    """(stage-1 partition, its horizons, partials, its input position when it sent them)."""
    obj = orjson.loads(raw)
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
