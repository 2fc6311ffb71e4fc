"""Send events from a JSON Lines or CSV file to Kafka, one topic per event type.

Events are sent as they are: the worker validates them and dead-letters the bad
ones, so a file is a faithful way to replay real (and really broken) traffic.
"""

from __future__ import annotations

import csv
import re
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

import orjson
from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from kpi_core.errors import InvalidEvent, KpimonError
from kpi_core.events import MARKER_HEADER, parse_ts
from streams.security import KafkaSecurity

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv",)

#: CSV cells in these columns become numbers when they look like one.
CSV_NUMBER_FIELDS = frozenset({"cost", "revenue", "amount", "score"})

_DIGITS = re.compile(r"[0-9]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


class InputFileError(KpimonError):
    """An events file cannot be read; fix the named line (or the file) and run again."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        super().__init__(f"{path}:{line}: {problem}" if line is not None else f"{path}: {problem}")


class ProduceError(KpimonError):
    """Kafka did not accept the events; check that the broker at the bootstrap address is up."""


def connect(bootstrap: str, *, acks: int | str, security: KafkaSecurity | None = None, max_block_ms: int = 60_000) -> KafkaProducer:
    """A KafkaProducer for ``bootstrap``, or ProduceError if no broker answers.

    ``security`` (TLS, SASL) defaults to the ``KAFKA_SECURITY_PROTOCOL``/``KAFKA_SASL_*``/``KAFKA_SSL_*`` environment.
    """
    if security is None:
        security = KafkaSecurity.from_env()
    try:
        return KafkaProducer(
            bootstrap_servers=bootstrap, acks=acks, linger_ms=20, bootstrap_timeout_ms=10_000, max_block_ms=max_block_ms,
            **security.kafka_python_options(),
        )
    except KafkaError as exc:
        raise ProduceError(f"cannot reach Kafka at {bootstrap}: {exc}") from None


def message_key(obj: Mapping[str, Any]) -> bytes | None:
    """A message key that spreads load: the visitor, else the campaign (the worker re-keys anyway)."""
    for name in ("visitor_id", "campaign"):
        value = obj.get(name)
        if isinstance(value, str):
            return value.encode()
    return None


class DeliveryTracker:
    """Counts sends that Kafka failed to deliver, and keeps the first error."""

    def __init__(self) -> None:
        self.failed = 0
        self.first_error: BaseException | None = None
        self._lock = threading.Lock()  # errbacks run on the producer's sender thread

    def watch(self, future: Any) -> None:
        """Count ``future`` (from ``KafkaProducer.send``) if it fails."""
        future.add_errback(self._on_error)

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            if self.first_error is None:
                self.first_error = exc


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Parsed events from a JSON Lines (.jsonl, .ndjson, .json) or CSV (.csv) file."""
    for _, obj, _ in _records(Path(path)):
        yield obj


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any], bytes]]:
    # (line number, parsed event, message value): for JSON Lines the value is the line as
    # written, so an event the contract rejects still reaches the worker unchanged.
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from _jsonl(path)
    elif suffix in CSV_SUFFIXES:
        yield from _csv(path)
    else:
        expected = ", ".join(JSONL_SUFFIXES + CSV_SUFFIXES)
        raise InputFileError(path, None, f"unsupported file type {path.suffix or '(none)'!r}; expected one of {expected}")


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any], bytes]]:
    try:
        with path.open("rb") as f:
            for number, line in enumerate(f, start=1):
                raw = line.rstrip(b"\r\n")
                if not raw.strip():
                    continue
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise InputFileError(path, number, f"not valid JSON ({exc}); each line must hold one JSON object") from None
                if not isinstance(obj, dict):
                    raise InputFileError(path, number, f"expected a JSON object, got {_json_kind(obj)}")
                yield number, obj, raw
    except OSError as exc:
        raise InputFileError(path, None, f"cannot read: {exc.strerror}") from None


def _csv(path: Path) -> Iterator[tuple[int, dict[str, Any], bytes]]:
    try:
        with path.open("rb") as f:
            reader = csv.reader(_text_lines(f, path))
            header: list[str] | None = None
            try:
                for row in reader:
                    if header is None:
                        header = [name.strip() for name in row]
                        continue
                    if not any(cell.strip() for cell in row):
                        continue
                    if len(row) != len(header):
                        raise InputFileError(path, reader.line_num, f"expected {len(header)} fields as in the header, got {len(row)}")
                    obj = _csv_event(header, row)
                    yield reader.line_num, obj, orjson.dumps(obj)
            except csv.Error as exc:
                raise InputFileError(path, reader.line_num, f"not valid CSV ({exc})") from None
    except OSError as exc:
        raise InputFileError(path, None, f"cannot read: {exc.strerror}") from None


def _text_lines(f: BinaryIO, path: Path) -> Iterator[str]:
    # Decoding line by line, rather than through a text stream that decodes ahead in
    # chunks, lets a bad byte be reported on its own line.
    for number, line in enumerate(f, start=1):
        try:
            # utf-8-sig on the first line: spreadsheet exports often start with a byte-order mark.
            yield line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise InputFileError(path, number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _csv_event(header: list[str], row: list[str]) -> dict[str, Any]:
    # Empty cells are absent fields: a file mixing event types leaves other types' columns empty.
    obj: dict[str, Any] = {}
    for name, cell in zip(header, row):
        if cell == "":
            continue
        obj[name] = _csv_value(name, cell)
    return obj


def _csv_value(name: str, cell: str) -> Any:
    if name in CSV_NUMBER_FIELDS:
        text = cell.strip()
        if _INTEGER.fullmatch(text):
            return int(text)
        if _DECIMAL.fullmatch(text):
            return float(text)
    elif name == "new_customer" and cell.strip().lower() in ("true", "false"):
        return cell.strip().lower() == "true"
    elif name == "ts" and _DIGITS.fullmatch(cell.strip()):
        return int(cell)
    return cell  # anything else stays a string; the worker judges it against the contract


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _route(obj: Mapping[str, Any], topics: Mapping[str, str], default_topic: str | None, path: Path, line: int) -> str:
    etype = obj.get("type")
    topic = topics.get(etype) if isinstance(etype, str) else None
    if topic is not None:
        return topic
    if default_topic is not None:
        return default_topic
    what = "the event has no type" if etype is None else f"no topic for type {str(etype)[:40]!r}"
    raise InputFileError(path, line, f"{what} (types with a topic: {', '.join(topics)}); pass a default topic to send it anyway")


def _timestamp(obj: Mapping[str, Any]) -> int | None:
    # An event with a bad ts still goes out, stamped by the producer, and the worker dead-letters it.
    try:
        return parse_ts(obj.get("ts"))
    except InvalidEvent:
        return None


def produce_file(
    path: Path,
    *,
    bootstrap: str,
    topics: Mapping[str, str],
    default_topic: str | None = None,
    security: KafkaSecurity | None = None,
    tracker_topic: Callable[[Any], str | None] | None = None,
) -> dict[str, int]:
    """Send every event in ``path`` to the topic of its type (``topics``: event type -> topic); return counts per topic.

    Events whose type has no topic go to ``default_topic``; without one, the file is
    rejected before anything is sent. Each message carries its event's time.
    ``tracker_topic(message)`` names the topic of a tracker's message (Segment, GA4, ...), if any.
    """
    path = Path(path)

    def route(obj: Mapping[str, Any], line: int) -> str:
        topic = tracker_topic(obj) if tracker_topic is not None else None
        return topic or _route(obj, topics, default_topic, path, line)

    for line, obj, _ in _records(path):  # a first pass, so a bad line sends nothing at all
        route(obj, line)
    counts: dict[str, int] = {}

    def send(producer: KafkaProducer, tracker: DeliveryTracker) -> int:
        for line, obj, value in _records(path):
            topic = route(obj, line)
            tracker.watch(producer.send(topic, value=value, key=message_key(obj), timestamp_ms=_timestamp(obj)))
            counts[topic] = counts.get(topic, 0) + 1
        return sum(counts.values())

    _send_all(bootstrap, security, f"events from {path}", send)
    return counts


def _send_all(bootstrap: str, security: KafkaSecurity | None, what: str,
              send: Callable[[KafkaProducer, DeliveryTracker], int], *, max_block_ms: int = 60_000) -> int:
    """Run ``send`` with a producer, wait for every delivery; ProduceError naming ``what`` if any failed."""
    producer = connect(bootstrap, acks="all", security=security, max_block_ms=max_block_ms)
    tracker = DeliveryTracker()
    try:
        n = send(producer, tracker)
        producer.flush()
    except KafkaError as exc:
        raise ProduceError(f"sending {what} to Kafka at {bootstrap} failed: {exc}") from None
    finally:
        producer.close()
    if tracker.failed:
        raise ProduceError(f"{tracker.failed} of {n} {what} were not delivered: {tracker.first_error}")
    return n


def send_markers(bootstrap: str, topics: Iterable[str], ts: int, *, security: KafkaSecurity | None = None) -> int:
    """A progress marker at ``ts`` in every partition of each topic; returns how many were sent.

    A marker (header ``kpimon-watermark``, docs/events.md) promises that no older event
    follows on its partition, so a finished backfill's last windows can close.
    """
    def send(producer: KafkaProducer, tracker: DeliveryTracker) -> int:
        sent = 0
        for topic in topics:
            try:
                partitions = producer.partitions_for(topic)
            except KafkaTimeoutError:
                partitions = None
            if not partitions:
                raise ProduceError(f"topic {topic} does not exist at {bootstrap}; create the topics first (kpimon topics)")
            for partition in sorted(partitions):
                headers = [(MARKER_HEADER, str(ts).encode())]
                tracker.watch(producer.send(topic, value=b"", partition=partition, headers=headers, timestamp_ms=ts))
                sent += 1
        return sent

    return _send_all(bootstrap, security, "progress markers", send, max_block_ms=5_000)


def last_event_time(path: Path, times_of: Callable[[Any], list[int]] | None = None) -> int | None:
    """The largest valid event time in a file (None if it has none).

    ``times_of(message)`` gives a tracker message's event times (docs/formats.md); others use ``ts``.
    """
    def times(obj: Any) -> list[int]:
        found = times_of(obj) if times_of is not None else []
        return found or [t for t in (_timestamp(obj),) if t is not None]

    return max((t for obj in read_events(path) for t in times(obj)), default=None)
