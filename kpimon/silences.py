"""``kpimon silence``: mute alerts for a campaign, channel or KPI for a while (kafka-python).

Silences live in a compacted topic (the config's ``topics.silences``, ``kpimon-silences`` by
default: the commands take ``--config`` like the worker) with one partition, keyed by silence id, so the latest record per id is
the silence and every worker folds the topic into the same ``SilenceSet``.

Expiring writes a new version of the silence whose ``ends_at`` is now, not a
tombstone: compaction keeps that version, so ``list --all`` still shows who muted
what, why and until when. ``expire --purge`` writes a tombstone instead, which
deletes the silence outright (and, after compaction, from the topic too).
"""

from __future__ import annotations

import getpass
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Optional

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kpi_core.config import format_duration, parse_duration
from kpi_core.errors import KpimonError
from kpi_core.silences import KPI, InvalidSilence, Silence, SilenceSet, UnknownSilence
from kpimon.broker import bootstrap_servers
from streams.security import KafkaSecurity

log = logging.getLogger("kpimon.silences")

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
CLIENT_ID = "kpimon-silences"
CLI_TIMEOUT = 10.0  # seconds the commands wait for Kafka before giving up


class SilenceStoreError(KpimonError):
    """The silences topic could not be created, read or written.

    Check that Kafka is up (``kpimon kafka status``) and that KAFKA_BOOTSTRAP_SERVERS points at it.
    """


def default_bootstrap() -> str:
    """``$KAFKA_BOOTSTRAP_SERVERS``, or the local broker's address."""
    return bootstrap_servers() or DEFAULT_BOOTSTRAP


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id() -> str:
    """A short random silence id: 12 hex digits (48 bits) are plenty for a hand-kept list."""
    return uuid.uuid4().hex[:12]


def parse_matchers(
    *, campaign: str | None = None, channel: str | None = None, kpi: str | None = None, match: Iterable[str] = ()
) -> dict[str, str]:
    """The matchers from ``--campaign``, ``--channel``, ``--kpi`` and repeated ``--match DIM=VALUE``."""
    matchers = {dim: value for dim, value in (("campaign", campaign), ("channel", channel), (KPI, kpi)) if value is not None}
    for item in match:
        dim, sep, value = item.partition("=")
        dim, value = dim.strip(), value.strip()
        if not sep or not dim or not value:
            raise InvalidSilence("bad_matcher", f"--match expects DIM=VALUE such as device=mobile, got {item!r}")
        if dim in matchers:
            raise InvalidSilence("bad_matcher", f"{dim} is matched twice; give one value (globs such as 'a*' match several)")
        matchers[dim] = value
    if not matchers:
        raise InvalidSilence(
            "no_matcher", "say what to silence: --campaign, --channel, --kpi or --match DIM=VALUE (at least one)"
        )
    return matchers


def parse_for(text: str) -> int:
    """``--for``: a positive duration such as ``30m``, ``2h`` or ``1d``, in milliseconds."""
    try:
        duration = parse_duration(text)
    except ValueError as exc:
        raise InvalidSilence("bad_duration", f"--for: {exc}") from None
    if duration <= 0:
        raise InvalidSilence("bad_duration", f"--for must be longer than zero, got {text!r}")
    return duration


@contextmanager
def _kafka(action: str, bootstrap: str) -> Iterator[None]:
    """Turn kafka-python's errors into a ``SilenceStoreError`` that says what failed and where."""
    from kafka.errors import KafkaError

    try:
        yield
    except KafkaError as exc:
        raise SilenceStoreError(f"could not {action} at {bootstrap}: {exc}") from exc


def _servers(bootstrap: str) -> list[str]:
    return [s.strip() for s in bootstrap.split(",") if s.strip()]


def _security(security: KafkaSecurity | None) -> KafkaSecurity:
    """``security``, or the ``KAFKA_SECURITY_PROTOCOL``/``KAFKA_SASL_*``/``KAFKA_SSL_*`` settings when None."""
    return security if security is not None else KafkaSecurity.from_env()


@contextmanager
def _admin(bootstrap: str, timeout: float, security: KafkaSecurity | None) -> Iterator[Any]:
    """A kafka-python admin client with our timeouts and security, closed afterwards."""
    from kafka import KafkaAdminClient

    timeout_ms = int(timeout * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=_servers(bootstrap),
        client_id=CLIENT_ID,
        bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
        **_security(security).kafka_python_options(),
    )
    try:
        yield admin
    finally:
        admin.close()


def ensure_topic(
    bootstrap: str,
    topic: str,
    *,
    replication_factor: int = 1,
    timeout: float = 10.0,
    security: KafkaSecurity | None = None,
) -> bool:
    """Create the compacted silences topic (one partition) if it is missing; return True if created.

    An existing topic that is not compacted is left alone, with a warning: it would
    eventually delete live silences by retention.
    """
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.errors import TopicAlreadyExistsError

    timeout_ms = int(timeout * 1000)
    with _kafka(f"create topic {topic}", bootstrap), _admin(bootstrap, timeout, security) as admin:
        if topic not in admin.list_topics():
            spec = {"num_partitions": 1, "replication_factor": replication_factor, "configs": {"cleanup.policy": "compact"}}
            try:
                admin.create_topics({topic: spec}, timeout_ms=timeout_ms, wait_for_metadata=True)
                log.info("created compacted topic %s", topic)
                return True
            except TopicAlreadyExistsError:
                return False  # another worker or CLI won the race: same topic, same config
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, ["cleanup.policy"])
        configs = admin.describe_configs([resource], config_filter="all")
        policy = configs.get("topic", {}).get(topic, {}).get("cleanup.policy", {}).get("value")
        if policy is not None and "compact" not in policy:
            log.warning("topic %s has cleanup.policy=%s; silences need compact or retention deletes them", topic, policy)
        return False


def topic_partitions(
    bootstrap: str, topic: str, *, timeout: float = 10.0, security: KafkaSecurity | None = None
) -> list[int]:
    """The topic's partition ids, or [] while it does not exist."""
    with _kafka(f"describe topic {topic}", bootstrap), _admin(bootstrap, timeout, security) as admin:
        found = [t for t in admin.describe_topics([topic]) if t.get("name") == topic and not t.get("error_code")]
    return sorted(p["partition_index"] for t in found for p in t.get("partitions") or [])


def _produce(
    bootstrap: str, topic: str, key: str, value: bytes | None, *, timeout: float, security: KafkaSecurity
) -> None:
    """Write one record and wait until every in-sync replica has it."""
    from kafka import KafkaProducer

    timeout_ms = int(timeout * 1000)
    with _kafka(f"write to {topic}", bootstrap):
        producer = KafkaProducer(
            bootstrap_servers=_servers(bootstrap),
            client_id=CLIENT_ID,
            acks="all",
            bootstrap_timeout_ms=timeout_ms,
            max_block_ms=timeout_ms,
            **security.kafka_python_options(),
        )
        try:
            producer.send(topic, key=key.encode(), value=value).get(timeout=timeout)
            producer.flush(timeout=timeout)
        finally:
            producer.close(timeout=timeout)


def add_silence(
    bootstrap: str,
    topic: str,
    *,
    matchers: Mapping[str, str],
    duration_ms: int,
    reason: str,
    created_by: str,
    now: int | None = None,
    timeout: float = 10.0,
    security: KafkaSecurity | None = None,
) -> Silence:
    """Silence ``matchers`` from now for ``duration_ms``; create the topic if needed and return the silence."""
    if duration_ms <= 0:
        raise InvalidSilence("bad_duration", f"a silence must last longer than zero, got {duration_ms} ms")
    start = now_ms() if now is None else now
    # Built (and so validated) before any connection: a bad request never touches Kafka.
    silence = Silence(
        id=new_id(),
        matchers=dict(matchers),
        starts_at=start,
        ends_at=start + duration_ms,
        reason=reason.strip(),
        created_by=created_by,
    )
    security = _security(security)
    ensure_topic(bootstrap, topic, timeout=timeout, security=security)
    _produce(bootstrap, topic, silence.id, silence.to_bytes(), timeout=timeout, security=security)
    log.info("silence %s added: %s until %d", silence.id, silence.describe(), silence.ends_at)
    return silence


def expire_silence(
    bootstrap: str,
    topic: str,
    silence_id: str,
    *,
    purge: bool = False,
    now: int | None = None,
    timeout: float = 10.0,
    security: KafkaSecurity | None = None,
) -> Silence:
    """End a silence now and return it as it was before; ``purge`` deletes it with a tombstone instead.

    Expiring an already expired silence writes nothing. Raises ``UnknownSilence`` for an id not on the topic.
    """
    security = _security(security)
    current = read_silences(bootstrap, topic, timeout, security=security).get(silence_id)
    if current is None:
        raise UnknownSilence(silence_id)
    at = now_ms() if now is None else now
    if purge:
        _produce(bootstrap, topic, silence_id, None, timeout=timeout, security=security)
    elif current.ends_at > at:
        _produce(bootstrap, topic, silence_id, current.expired(at).to_bytes(), timeout=timeout, security=security)
    return current


def read_silences(
    bootstrap: str, topic: str, timeout: float = 10.0, *, security: KafkaSecurity | None = None
) -> SilenceSet:
    """Read the topic from the beginning up to its end offsets as of now; a missing topic has no silences."""
    from kafka import KafkaConsumer, TopicPartition

    silences = SilenceSet()
    timeout_ms = int(timeout * 1000)
    options = _security(security).kafka_python_options()
    with _kafka(f"read {topic}", bootstrap):
        consumer = KafkaConsumer(
            bootstrap_servers=_servers(bootstrap),
            client_id=CLIENT_ID,
            group_id=None,  # no group: nothing to commit, every reader sees the whole topic
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            bootstrap_timeout_ms=timeout_ms,
            **options,
        )
        try:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                return silences
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            end = consumer.end_offsets(tps, timeout_ms=timeout_ms)
            deadline = time.monotonic() + timeout
            while not all(_reached(consumer.position(tp, timeout_ms=timeout_ms), end[tp]) for tp in tps):
                if time.monotonic() > deadline:
                    raise SilenceStoreError(f"timed out after {timeout:g}s reading {topic} at {bootstrap}")
                for tp, records in consumer.poll(timeout_ms=200).items():
                    for record in records:
                        problem = silences.apply(record.key, record.value)
                        if problem:
                            log.warning("ignored record %s[%d]@%d: %s", topic, tp.partition, record.offset, problem)
        finally:
            consumer.close()
    return silences


def _reached(position: int | None, end: int) -> bool:
    return position is not None and position >= end  # None: the seek to the beginning is still under way


# --- the ``kpimon silence`` commands ----------------------------------------------------------

silence_app = typer.Typer(
    help="Mute alerts for a campaign, channel or KPI for a while; every worker respects silences.",
    no_args_is_help=True,
    add_completion=False,
)
_out = Console()
_err = Console(stderr=True, soft_wrap=True)  # an error stays on one line, whole, for copying

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="kpimon.yaml, whose topics.silences holds the silences "
                 "(default: ./kpimon.yaml if present, else the built-in)"),
]


def _topic(config: Optional[Path]) -> str:
    """The silences topic: the one the workers read, from the same kpimon.yaml."""
    from kpimon.cli import _load  # the CLI's loader: a bad config prints its problems and exits 2

    return _load(config).topics.silences


@contextmanager
def _errors() -> Iterator[None]:
    """Print kpimon's errors plainly: bad input exits 2, anything else 1."""
    try:
        yield
    except InvalidSilence as exc:
        _err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except KpimonError as exc:
        _err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None


def _user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (OSError, KeyError):  # no passwd entry, as in some containers
        return "unknown"


def _when(ms: int, *, short: bool = False) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%MZ")


def _status(silence: Silence, at: int) -> str:
    """``in 1h59m`` (active), ``[dim]ended 3m ago[/dim]`` or ``[yellow]starts in 5m[/yellow]``."""
    state = silence.state(at)
    if state == "pending":
        return f"[yellow]starts {_relative(silence.starts_at, at)}[/yellow]"
    if state == "expired":
        return f"[dim]ended {_relative(silence.ends_at, at)}[/dim]"
    return f"[green]{_relative(silence.ends_at, at)}[/green]"


def _relative(ms: int, at: int) -> str:
    """``in 1h59m`` or ``3m ago``, to the second."""
    delta = abs(ms - at) // 1000 * 1000
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if delta >= size:
            parts.append(f"{delta // size}{unit}")
            delta %= size
    text = "".join(parts[:2]) or "0s"
    return f"in {text}" if ms >= at else f"{text} ago"


@silence_app.command("add")
def add_command(
    duration: Annotated[str, typer.Option("--for", help="How long: 30m, 2h, 1d...", show_default=False)],
    reason: Annotated[str, typer.Option("--reason", help="Why, for whoever sees the silence.", show_default=False)],
    campaign: Annotated[str | None, typer.Option("--campaign", help="Campaign name or glob (spring-*).")] = None,
    channel: Annotated[str | None, typer.Option("--channel", help="Channel name or glob.")] = None,
    kpi: Annotated[str | None, typer.Option("--kpi", help="KPI name or glob; all KPIs if omitted.")] = None,
    match: Annotated[
        list[str] | None, typer.Option("--match", help="DIM=VALUE on another breakdown dimension; repeatable.")
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who is silencing (default: $USER).")] = None,
    config: ConfigOption = None,
) -> None:
    """Silence alerts matching every given matcher, starting now."""
    topic = _topic(config)
    with _errors():
        matchers = parse_matchers(campaign=campaign, channel=channel, kpi=kpi, match=match or ())
        duration_ms = parse_for(duration)
        if not reason.strip():
            raise InvalidSilence("no_reason", "--reason must say why, so others know why alerts are muted")
        silence = add_silence(
            default_bootstrap(),
            topic,
            matchers=matchers,
            duration_ms=duration_ms,
            reason=reason,
            created_by=by or _user(),
            timeout=CLI_TIMEOUT,
        )
    _out.print(
        f"Added silence [bold]{silence.id}[/bold]: {escape(silence.describe())} "
        f"for {format_duration(duration_ms)}, until {_when(silence.ends_at)}",
        soft_wrap=True,
    )


@silence_app.command("list")
def list_command(
    all_: Annotated[bool, typer.Option("--all", help="Include expired silences.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line instead of a table.")] = False,
    config: ConfigOption = None,
) -> None:
    """Show the silences in force (and those yet to start); --all adds expired ones."""
    topic = _topic(config)
    with _errors():
        silences = read_silences(default_bootstrap(), topic, CLI_TIMEOUT)
    at = now_ms()
    shown = [s for s in silences.all() if all_ or s.ends_at > at]
    if as_json:
        for s in shown:
            print(orjson.dumps({**s.to_json(), "state": s.state(at)}).decode())
        return
    if not shown:
        _out.print("No silences." if all_ else "No active silences.")
        return
    table = Table(title=f"Silences on {escape(topic)}")
    table.add_column("id", no_wrap=True, style="bold")
    table.add_column("matchers", no_wrap=True)  # the reason wraps first
    table.add_column("until (UTC)", no_wrap=True)
    table.add_column("reason", min_width=16, overflow="fold")
    table.add_column("by", overflow="fold")
    for s in shown:
        table.add_row(
            s.id,
            "\n".join(escape(f"{dim}={pattern}") for dim, pattern in s.matchers.items()),
            f"{_when(s.ends_at, short=True)}\n{_status(s, at)}",
            escape(s.reason),
            escape(s.created_by),
        )
    _out.print(table)


@silence_app.command("expire")
def expire_command(
    silence_id: Annotated[str, typer.Argument(metavar="ID", help="The silence's id, from `kpimon silence list`.")],
    purge: Annotated[
        bool, typer.Option("--purge", help="Delete it (a tombstone) instead of keeping it as expired.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """End a silence now; alerts it muted are delivered again from the next evaluation."""
    topic = _topic(config)
    at = now_ms()
    with _errors():
        before = expire_silence(default_bootstrap(), topic, silence_id, purge=purge, now=at, timeout=CLI_TIMEOUT)
    if purge:
        _out.print(f"Deleted silence [bold]{before.id}[/bold] ({escape(before.describe())}).")
    elif before.ends_at <= at:
        _out.print(f"Silence [bold]{before.id}[/bold] had already expired at {_when(before.ends_at)}.")
    else:
        _out.print(f"Expired silence [bold]{before.id}[/bold] ({escape(before.describe())}).")
