"""The ``kpimon`` command line: broker, worker, simulator, producer, replay, config check, demo."""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import orjson
import typer
from rich.console import Console

from kpi_core import config as config_mod
from kpi_core.errors import ConfigError, KpimonError
from kpimon.broker import LocalBroker, bootstrap_servers, kafka_app, project_root
from kpimon.silences import silence_app

cli = typer.Typer(help="kpimon: streaming marketing KPI monitor.", no_args_is_help=True, add_completion=False)
cli.add_typer(kafka_app, name="kafka", help="Run a local single-node Kafka broker (KRaft).")
cli.add_typer(silence_app, name="silence", help="Silence alerts for a campaign, channel or KPI for a while.")
out = Console()
err = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="kpimon.yaml (default: ./kpimon.yaml if present, else the built-in)")


def _bootstrap() -> str:
    return bootstrap_servers() or "127.0.0.1:9092"


def _load(path: Optional[Path]) -> config_mod.Config:
    if path is None and Path("kpimon.yaml").exists():
        path = Path("kpimon.yaml")
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        err.print(f"[red]invalid config {path or '(built-in)'}:[/red]")
        for where, msg in exc.problems:
            err.print(f"  {where or '<root>'}: {msg}", markup=False, highlight=False)
        raise typer.Exit(2) from None


@cli.command("check-config")
def check_config(path: Path = typer.Argument(..., help="the kpimon.yaml to check")) -> None:
    """Validate a config file; print every problem with its field path."""
    cfg = _load(path)
    out.print(f"[green]ok[/green]: {len(cfg.enabled_kpis())} KPIs, {len(cfg.measures)} measures, windows {', '.join(w.name for w in cfg.windows)}")


@cli.command()
def init(
    sample: Path = typer.Argument(..., help="a JSONL file of real messages: kpimon's contract, Segment, Snowplow or GA4 "
                                  "(CSV: kpimon's contract only)"),
    output: Path = typer.Option(Path("kpimon.yaml"), "--output", "-o", help="where to write the config"),
    topic: Optional[str] = typer.Option(None, help="the tracker's Kafka topic (default: <format>-events)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Write a starting kpimon.yaml for the events a sample holds (its format is recognised)."""
    from kpimon.init import write

    s = write(sample, output, topic=topic, force=force)
    out.print(f"[green]wrote {output}[/green]: {s.messages} messages ({', '.join(f'{n} {f}' for f, n in s.formats.most_common())}) "
              f"({', '.join(f'{n} {t}' for t, n in s.events.most_common())}; {s.skipped} skipped, {sum(s.invalid.values())} invalid)")
    out.print(f"next: kpimon check-config {output} && kpimon replay {sample} --config {output} --format table")


@cli.command()
def topics(config: Optional[Path] = ConfigOpt) -> None:
    """Create the source, output and internal topics if they are missing."""
    from kpimon.topics import ensure_topics
    from streams.settings import WorkerSettings

    created = ensure_topics(_load(config), WorkerSettings.from_env(_env()))
    out.print(f"created: {', '.join(created) or 'nothing (all exist)'}")


def _env() -> dict[str, str]:
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": _bootstrap()}


@cli.command()
def worker(
    config: Optional[Path] = ConfigOpt,
    loglevel: str = typer.Option("warning", help="debug, info, warning or error (warning: only what needs a person)"),
) -> None:
    """Run a stream worker. Start more to share the partitions (same KPIMON_APP_ID)."""
    import faust

    from alerts import build_delivery
    from kpi_core.plan import Plan
    from kpimon.topics import ensure_topics
    from streams.app import Pipeline
    from streams.metrics import Metrics
    from streams.settings import Settings
    from streams.silences import FeedbackWatcher, SilenceWatcher

    cfg = _load(config)
    try:
        settings = Settings.from_env(_env())
    except ConfigError as exc:
        err.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from None
    ensure_topics(cfg, settings.worker, security=settings.kafka)
    plan = Plan(cfg)
    feedback = FeedbackWatcher(settings.worker.bootstrap, cfg.topics.feedback, security=settings.kafka)
    delivery = build_delivery(settings.slack, default_channel=cfg.alerting.default_channel, feedback=feedback.feedback.get,
                              charts=cfg.alerting.slack.charts)
    silences = SilenceWatcher(settings.worker.bootstrap, cfg.topics.silences, security=settings.kafka)
    pipeline = Pipeline(plan, settings.worker, delivery, Metrics(plan), silences, security=settings.kafka,
                        feedback=feedback, slack=settings.slack)
    level = loglevel.upper()
    if level not in ("DEBUG", "INFO"):
        # The frameworks' warnings ("Timer commit is overlapping", a slow task "blocking the event
        # loop", "Idempotence will be disabled") are routine under load and ask nothing of anyone;
        # kpimon's own loggers report what does (a lost broker, a refused Slack token, a crash).
        for name in FRAMEWORK_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    err.print(f"kpimon worker {settings.worker.app_id}: {len(cfg.topics.sources)} source topics, "
              f"metrics on port {settings.worker.metrics_port or cfg.metrics_port}; logging at {level}", highlight=False)
    # Without redirect_stdouts=False, Faust re-logs the console alerts as WARNING lines.
    faust.Worker(pipeline.app, loglevel=level, quiet=True, redirect_stdouts=False).execute_from_commandline()


@cli.command()
def simulate(
    campaigns: int = typer.Option(20, help="number of campaigns"),
    rate: float = typer.Option(20.0, help="impressions per second per campaign"),
    duration: Optional[float] = typer.Option(None, help="seconds of event time (default: run until Ctrl-C)"),
    drop: Optional[str] = typer.Option(None, help="campaign whose CTR drops, e.g. camp-003"),
    drop_factor: float = typer.Option(0.3, help="CTR multiplier after the drop (0.3 = a 70% drop)"),
    drop_at: float = typer.Option(30.0, help="seconds after the start when the drop begins"),
    fast: bool = typer.Option(False, help="produce as fast as possible instead of in real time"),
    seed: int = typer.Option(7, help="random seed"),
    delivery: str = typer.Option("platforms", help="platforms: spend as hourly reports 2 h late and restated, leads in "
                                 "15-minute syncs, orders 30 min late; demo: the same in minutes; live: everything at once"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Produce realistic marketing traffic to Kafka, optionally with a CTR drop."""
    from kpimon.simulator import DEMO_DELIVERY, Anomaly, Delivery, SimConfig, run, source_topics

    deliveries = {"platforms": Delivery(), "demo": DEMO_DELIVERY, "live": None}
    if delivery not in deliveries:
        raise typer.BadParameter(f"expected one of {', '.join(deliveries)}", param_hint="--delivery")
    cfg = _load(config)
    sim = SimConfig(campaigns=campaigns, rate=rate, seed=seed, ctr_range=(0.04, 0.06))
    anomalies = [Anomaly(campaign=drop, factor=drop_factor, start_s=drop_at)] if drop else []
    topic_for, formats = source_topics(cfg.topics.sources)
    n = run(sim, bootstrap=_bootstrap(), topics=topic_for, duration_s=duration, realtime=not fast, anomalies=anomalies,
            delivery=deliveries[delivery], formats=formats)
    out.print(f"produced {n} events")


@cli.command()
def produce(
    file: Path = typer.Argument(..., help="JSONL or CSV of events"),
    config: Optional[Path] = ConfigOpt,
    complete: bool = typer.Option(False, "--complete", help="the file is all there is up to its last event: close its windows"),
) -> None:
    """Load a file of events into the source topics, keeping event timestamps.

    Historical data holds windows open while it is quiet (a paused backfill loses
    nothing), so a backfill's last windows close when newer data arrives. With
    --complete, a progress marker on every source partition closes them now.
    """
    from kpimon.producer import last_event_time, produce_file, send_markers

    cfg = _load(config)
    topic_for = {etype: topic for topic, etype in cfg.topics.types().items()}
    counts = produce_file(file, bootstrap=_bootstrap(), topics=topic_for, tracker_topic=cfg.topics.tracker_topic)
    for topic, n in sorted(counts.items()):
        out.print(f"{topic}: {n}")
    last = last_event_time(file, _tracker_times(cfg))
    if complete and last is not None:
        # Past the end of the last event's largest window, its lateness and its sessions phase,
        # but never past now: live events may follow a recent file, and must not be late.
        settle = max(w.size for w in cfg.windows) + cfg.allowed_lateness + cfg.session_timeout
        ts = min(last + settle, int(time.time() * 1000))
        n = send_markers(_bootstrap(), list(cfg.topics.sources), ts)
        out.print(f"progress markers: {n} (every source partition is complete up to {ts} ms)")


def _tracker_times(cfg: config_mod.Config) -> Callable[[Any], list[int]]:
    """A tracker message's event times, read by the config's topic of its format ([] for others)."""
    from kpi_core.errors import InvalidEvent
    from kpi_core.plan import Plan

    decoders = Plan(cfg).decoders

    def times(message: Any) -> list[int]:
        topic = cfg.topics.tracker_topic(message)
        if topic is None:
            return []
        try:
            return [ev.ts for ev in decoders[topic].events(message)]
        except InvalidEvent:
            return []  # the worker dead-letters it; it moves no window

    return times


@cli.command()
def replay(
    file: Path = typer.Argument(..., help="JSONL or CSV of events"),
    config: Optional[Path] = ConfigOpt,
    fmt: str = typer.Option("jsonl", "--format", help="jsonl or table"),
) -> None:
    """Run the KPI computation over a file, without Kafka: closed windows and the alerts they'd fire."""
    from kpimon.replay import replay_file

    if fmt not in ("jsonl", "table"):
        err.print("--format must be jsonl or table")
        raise typer.Exit(2)
    replay_file(file, _load(config), fmt=fmt, out=out, err=err)


@cli.command()
def history(
    out_file: Path = typer.Argument(..., help="where to write the hourly kpi-snapshots records (JSONL)"),
    labels: Path = typer.Option(..., "--labels", help="where to write the injected anomalies (JSONL)"),
    campaigns: int = typer.Option(200, help="number of campaigns"),
    weeks: int = typer.Option(8, help="weeks of hourly history"),
    seed: int = typer.Option(1, help="random seed"),
    segments: bool = typer.Option(False, "--segments", help="no rhythm, every campaign on target, on three devices, "
                                  "with CTR drops in chosen (campaign, device) segments: for false-discovery control"),
    hours: Optional[int] = typer.Option(None, help="--segments: hours of history (default: --weeks)"),
    drops: int = typer.Option(30, help="--segments: how many segment drops to inject"),
) -> None:
    """Simulate hourly KPI history with daily and weekly rhythm, noise and labelled anomalies (for backtest)."""
    from kpimon import history as hist

    if segments:
        span = hours or weeks * 168
        cuts = hist.segment_drops(campaigns, span, drops, seed)
        with out_file.open("wb") as f:
            for row in hist.segment_rows(campaigns, span, seed, cuts):
                f.write(orjson.dumps(row) + b"\n")
        labels.write_bytes(b"".join(orjson.dumps(d.to_json()) + b"\n" for d in cuts))
        out.print(f"{span} hours of {campaigns:,} campaigns in {out_file} (breakdowns "
                  f"{', '.join(','.join(b) or 'total' for b in hist.SEGMENT_BREAKDOWNS)}); {len(cuts)} drops in {labels}")
        return
    marks = hist.anomalies(campaigns, weeks, seed)
    with out_file.open("wb") as f:
        for row in hist.rows(campaigns, weeks, seed, marks):
            f.write(orjson.dumps(row) + b"\n")
    labels.write_bytes(b"".join(orjson.dumps(a.to_json()) + b"\n" for a in marks))
    out.print(f"{campaigns * weeks * 168:,} hourly records in {out_file}; {len(marks)} anomalies in {labels}")


@cli.command()
def backtest(
    file: Path = typer.Argument(..., help="history: events, or kpi-snapshots records (JSONL), in time order"),
    config: Optional[Path] = ConfigOpt,
    labels: Optional[Path] = typer.Option(None, "--labels", help="known incidents (JSONL: campaign or group, kpi, start, end)"),
    charts: Optional[Path] = typer.Option(None, "--charts", help="directory for a PNG per alerting group and KPI"),
    max_charts: int = typer.Option(12, help="at most this many charts"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """What the config's alert rules would have done on a history: alerts per week, precision, recall, delay."""
    from rich.table import Table

    from kpi_core.plan import Plan
    from kpimon import backtest as bt

    if fmt not in ("table", "json"):
        err.print("--format must be table or json")
        raise typer.Exit(2)
    plan = Plan(_load(config))
    marks = bt.read_labels(labels) if labels else None
    outcome = bt.judge(plan, file, series_for=set(plan.config.targets) if charts else None)
    scores = bt.score(outcome, marks)
    written = bt.charts(outcome, marks, charts, limit=max_charts) if charts else []
    summary = {"windows": outcome.windows, "groups": outcome.groups, "weeks": round(outcome.span_ms / bt.WEEK, 2),
               "alerts": [{"kpi": a.kpi, "window": a.window, "group": dict(a.group), "start": a.start} for a in outcome.alerts],
               "rules": {k: {x: v for x, v in r.items() if x != "delays_ms"} for k, r in scores.items()},
               "charts": [str(p) for p in written]}
    if marks is not None:
        summary["false_per_10_group_weeks"] = bt.false_per_10_group_weeks(outcome, scores)
    fdr = plan.config.alerting.fdr
    size = plan.windows[0].step or plan.windows[0].size
    summary["discovery"] = {"q": fdr.q if fdr else None, "family": fdr.family if fdr else None,
                            "with_fdr" if fdr else "without_fdr": bt.discoveries(outcome, marks, size)}
    if fdr is not None:  # what the same rules would have sent without the control
        summary["discovery"]["without_fdr"] = bt.discoveries(bt.judge(bt.without_fdr(plan), file), marks, size)
    if fmt == "json":
        out.print_json(orjson.dumps(summary).decode())
        return
    table = Table(title=f"backtest: {outcome.groups:,} groups, {summary['weeks']} weeks")
    for col in ("rule (kpi)", "alerts", "per group-week", "precision", "recall (delay, windows)"):
        table.add_column(col)
    for kpi, r in scores.items():
        recall = ", ".join(f"{shape} {rate:.0%} ({r['mean_delay_ms'][shape] / size:.1f})" for shape, rate in (r.get("recall") or {}).items())
        precision = "" if r.get("precision") is None else f"{r['precision']:.0%}"
        table.add_row(kpi, f"{r['alerts']:,}", f"{r['alerts_per_group_week']:.2f}", precision, recall)
    out.print(table)
    if marks is not None:
        out.print(f"false incidents per 10 group-weeks: {summary['false_per_10_group_weeks']:.2f}")
    for name, label in (("with_fdr", f"with FDR control (q = {fdr.q if fdr else ''}, {fdr.family if fdr else ''})"), ("without_fdr", "without FDR control")):
        d = summary["discovery"].get(name)
        if d is None:
            continue
        line = (f"{label}: windows with any alert {d['windows_with_alert']} of {d['windows']} ({d['share_of_windows_with_alert']:.1%}), "
                f"incidents {d['incidents']:,}, false {d['false_incidents']:,}")
        if "labelled" in d:
            line += f"; labels caught within 2 windows {d['detected']} of {d['labelled']}, as one incident on their group {d['one_incident_each']}"
        out.print(line)
    for p in written:
        out.print(f"chart: {p}")


@cli.command()
def demo(
    duration: float = typer.Option(150.0, help="seconds to run the simulator"),
    port: int = typer.Option(6066, help="metrics port"),
) -> None:
    """Start Kafka, a worker and the simulator with a CTR drop; watch the KPIs and the alert live. Ctrl-C stops all."""
    from kpimon import demo as demo_mod

    root = project_root()
    demo_cfg = root / "deploy" / "demo" / "kpimon.yaml"
    env = dict(os.environ)
    started_broker = None
    if bootstrap_servers() is None:
        started_broker = LocalBroker(root)
        was_running = started_broker.is_running()
        out.print("starting the local Kafka broker ...")
        env["KAFKA_BOOTSTRAP_SERVERS"] = started_broker.up()
        if was_running:
            started_broker = None  # not ours to stop
    env.setdefault("KPIMON_APP_ID", f"kpimon-demo-{int(time.time())}")
    env["KPIMON_METRICS_PORT"] = str(port)
    log_path = root / ".cache" / "demo" / f"{env['KPIMON_APP_ID']}.log"
    try:
        demo_mod.run(root, demo_cfg, _load(demo_cfg), bootstrap=env["KAFKA_BOOTSTRAP_SERVERS"], env=env, duration=duration,
                     port=port, log_path=log_path, console=out)
    finally:
        if started_broker is not None:
            started_broker.down()
        out.print(f"demo stopped; logs: {demo_mod._relative(log_path)}")


#: Loggers of the libraries under the worker: quiet (errors only) unless --loglevel info or debug.
FRAMEWORK_LOGGERS = ("faust", "mode", "aiokafka", "kafka")

#: Python's cyclic GC runs a young collection every 700 allocations and a full one when objects
#: promoted since the last grow by a quarter. A batch of 10,000 events lives just long enough to
#: be promoted, so with a large state (hundreds of thousands of cells) full collections kept
#: traversing all of it: a sixth of ``kpimon replay``'s time and much of the router's in the
#: worker's profile. Batches now die young; state has no reference cycles to find.
GC_THRESHOLDS = (100_000, 50, 100)


def main() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python logs every connection at INFO
    try:
        cli()
    except KpimonError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
