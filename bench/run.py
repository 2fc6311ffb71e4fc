"""kpimon benchmark: throughput against a raw Kafka consumer, latency to Slack, memory, scaling.

    .venv/bin/python bench/run.py            # the full run (~10-15 min), writes docs/benchmarks.md
    .venv/bin/python bench/run.py --quick    # 100k events and shorter phases, for iteration
    .venv/bin/python bench/run.py --phases throughput,latency --events 300000

Starts a private broker on free ports (name bench-<pid>) unless KAFKA_BOOTSTRAP_SERVERS is
set, and stops it at the end. Every topic, consumer group and app id carries a per-run
prefix. Raw results go to bench/out/results.json; worker logs and profiles to bench/out/.
Not a test: ``make test`` never runs it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(BENCH_DIR.parent))  # for tests.support.slack_api

import orjson  # noqa: E402
import yaml  # noqa: E402

import report  # noqa: E402
from common import (  # noqa: E402
    OUT, ROOT, GroupLag, WorkerProc, broker, cpu_times, create_topics, default_catalogue, delete_topics, loadavg, log,
    machine_info, percentile, source_topics, topics_section, versions,
)
from spy import summarize  # noqa: E402

PY = sys.executable
SLACK_TOKEN = "xoxb-bench-0000-kpimon"
PARTITIONS = 4


class Ctx:
    def __init__(self, args: argparse.Namespace, bootstrap: str) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.prefix = f"bench{os.getpid()}t{int(time.time()) % 100000}"
        self.work = OUT / "tmp" / self.prefix
        self.work.mkdir(parents=True, exist_ok=True)
        self.preloaded: dict[str, Any] | None = None
        self.src = f"{self.prefix}-tp"
        self.broker_dir: Path | None = None


def run_json(cmd: list[str], timeout: float, what: str) -> dict[str, Any]:
    """Run a helper script (progress on our stderr) and parse the JSON on its last stdout line."""
    try:
        out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} did not finish within {timeout:.0f}s") from None
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed (exit code {out.returncode}): {out.stdout[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def read_topic(bootstrap: str, topic: str, timeout: float = 60) -> list[tuple[int, int, bytes | None, bytes]]:
    """Every record of a topic as (timestamp, timestamp_type, key, value)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False, group_id=None)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                out += [(r.timestamp, r.timestamp_type, r.key, r.value) for r in recs]
        return out
    finally:
        consumer.close()


def throughput_config(ctx: Ctx, app_id: str) -> dict[str, Any]:
    """The full default catalogue (1m and 1h windows), a CTR target, memory store; private outputs.

    ``--throughput-idle-timeout`` can override ``idle_timeout`` (default: the catalogue's 10s).
    Before commit 8f85abe a worker stalled for longer than that while working through a backlog,
    every source looked idle, the watermark jumped to the wall clock and 55% of a 100k backlog
    was dropped as late; check ``late_events`` in the results stays 0.
    """
    cfg = default_catalogue()
    if ctx.args.throughput_idle_timeout:
        cfg["idle_timeout"] = ctx.args.throughput_idle_timeout
    cfg["topics"] = topics_section(ctx.src, app_id, PARTITIONS)
    # A sane rule: below 2% CTR with 95% confidence, on at least 100 impressions.
    cfg["targets"] = {"ctr": {"value": "2%", "min_denominator": 100, "confidence": 0.95}}
    return cfg


# -- phase 1: preload, ceiling, kpi_core alone, one worker (profiled) ---------------


def preload(ctx: Ctx) -> dict[str, Any]:
    if ctx.preloaded is not None:
        return ctx.preloaded
    a = ctx.args
    create_topics(ctx.bootstrap, {t: PARTITIONS for t in source_topics(ctx.src)})
    log(f"== preload: {a.events:,} events into {len(source_topics(ctx.src))} source topics ({PARTITIONS} partitions each)")
    ctx.preloaded = run_json(
        [PY, str(BENCH_DIR / "preload.py"), "--bootstrap", ctx.bootstrap, "--prefix", ctx.src,
         "--events", str(a.events), "--campaigns", str(a.campaigns)],
        timeout=60 + a.events / 2_000, what="preload",
    )
    return ctx.preloaded


def phase_throughput(ctx: Ctx, results: dict[str, Any]) -> None:
    a = ctx.args
    res = results.setdefault("throughput", {})
    res["preload"] = preload(ctx)
    n = res["preload"]["events"]

    # Two raw readers; the ceiling is the faster of them.
    res["ceilings"] = {}
    for client in ("aiokafka", "confluent"):
        log(f"== ceiling: plain {client} consumer + orjson.loads over all {n:,} events")
        res["ceilings"][client] = run_json(
            [PY, str(BENCH_DIR / "ceiling.py"), "--client", client, "--bootstrap", ctx.bootstrap,
             "--group", f"{ctx.prefix}-ceiling-{client}", "--expect", str(n), "--timeout", str(60 + n / 5_000),
             *source_topics(ctx.src)],
            timeout=120 + n / 5_000, what=f"ceiling consumer ({client})",
        )
        c = res["ceilings"][client]
        log(f"ceiling ({client}): {c['rate_from_first']:,} events/s from the first message ({c['rate_from_start']:,}/s from start)")
    res["ceiling"] = max(res["ceilings"].values(), key=lambda c: c["rate_from_first"])

    if not a.no_compute:
        cfg_path = ctx.work / "compute.yaml"
        cfg_path.write_text(yaml.safe_dump(throughput_config(ctx, f"{ctx.prefix}-compute")))
        log(f"== kpi_core alone (no Kafka): decode + LocalPipeline over {n:,} events")
        res["compute"] = run_json(
            [PY, str(BENCH_DIR / "compute.py"), "--config", str(cfg_path), "--events", str(min(n, 200_000)),
             "--campaigns", str(a.campaigns)],
            timeout=600, what="kpi_core compute",
        )
        log(f"kpi_core alone: decode {res['compute']['decode_rate']:,}/s, decode+pipeline {res['compute']['pipeline_rate']:,}/s")

    log(f"== worker: one kpimon worker (full catalogue) over the {n:,} preloaded events, profiled with py-spy")
    res["worker"] = measure_workers(ctx, n, workers=1, label="w1p", profile=not a.no_profile)
    ceiling = res["ceiling"]["rate_from_first"]
    w = res["worker"]
    res["ratio_from_first"] = round(w["rate_from_first"] / ceiling, 3) if ceiling else None
    res["ratio_from_start"] = round(w["rate_from_start"] / res["ceiling"]["rate_from_start"], 3)
    res["stage1_ratio"] = round(w["stage1_rate_from_first"] / ceiling, 4) if ceiling else None
    log(f"worker: {w['rate_from_first']:,} events/s counted = {100 * (res['ratio_from_first'] or 0):.2f}% of the raw "
        f"consumer; into stage-1 state {w['stage1_rate_from_first']:,} events/s")


def measure_workers(ctx: Ctx, n: int, *, workers: int, label: str, profile: bool, cap: int | None = None,
                    env: dict[str, str] | None = None,
                    config: Callable[[Ctx, str], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Start ``workers`` processes in one group on the preloaded topics; time until /metrics counts n events.

    A run is capped at ``--worker-seconds`` after the first event: a slow worker is then
    measured on the events it got through (the rate over a long enough stretch is what counts).
    """
    a = ctx.args
    app_id = f"{ctx.prefix}-{label}"
    base = (config or throughput_config)(ctx, app_id)
    procs = [
        WorkerProc(copy.deepcopy(base), bootstrap=ctx.bootstrap, app_id=app_id, workdir=ctx.work, name=f"{app_id}-{i}", env=env)
        for i in range(workers)
    ]
    cap = cap or a.worker_seconds
    precreate_topics(ctx, base, app_id)
    spies: list[subprocess.Popen[bytes]] = []
    samples: list[tuple[float, float]] = []
    scrape_s: list[float] = []
    scrape_bytes = 0
    ready: dict[str, float] = {}
    t_first = n_first = t_end = None
    counted = 0.0
    cpu_first: list[float] = []
    t0 = time.monotonic()
    for p in procs:
        p.start()
    last_log = t0
    try:
        while True:
            t = time.monotonic() - t0
            if t_first is None and t > 120:
                raise RuntimeError(f"{workers} worker(s) counted no event within 120s; log:\n{procs[0].tail()}")
            if t_first is not None and t - t_first > cap:
                t_end = t
                log(f"{label}: stopping the clock at the {cap}s cap with {counted:,.0f} of {n:,} counted")
                break
            for p in procs:
                p.check_alive()
                if p.name not in ready:
                    h = p.health()
                    if h and h.get("ready"):
                        ready[p.name] = round(time.monotonic() - t0, 2)
            scrapes = [p.scrape() for p in procs]
            t = time.monotonic() - t0
            if all(s is not None for s in scrapes):
                counted = sum(s.total for s in scrapes)
                samples.append((round(t, 2), counted))
                scrape_s += [s.seconds for s in scrapes]
                scrape_bytes = max(scrape_bytes, max(s.bytes for s in scrapes))
                if counted > 0 and t_first is None:
                    t_first, n_first = t, counted
                    cpu_first = [p.cpu_seconds() for p in procs]
                    if profile:
                        spies = start_spies(procs[0].pid, a.profile_seconds)
                if counted >= n:
                    t_end = t
                    log(f"{label}: all {n:,} events counted {t_end:.1f}s after start")
                    break
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                log(f"{label}: {counted:,.0f} / {n:,} events counted after {t:.0f}s")
            time.sleep(a.poll)
        cpu_end = [p.cpu_seconds() for p in procs]
        complete = counted >= n
        if complete:
            log(f"{label}: waiting for stage 1 and stage 2 to commit everything")
            stages = wait_stages(ctx, app_id, t0, timeout=a.stage_timeout)
        else:
            stages = {"stage1_caught_up_s": None, "stage2_caught_up_s": None}
        # Events absorbed by stage 1 (its committed input), now: the durable progress of the pipeline.
        stage1_events, stage1_at = committed_events(ctx, app_id), time.monotonic() - t0
        final = [p.scrape() for p in procs]
        rss = [p.rss_kb() for p in procs]
        if profile and spies:
            collect_spies(spies, procs[0].pid)
    finally:
        for s in spies:
            if s.poll() is None:
                s.terminate()
        for p in procs:
            p.stop()
    busy = t_end - t_first
    stage1_done = stages.get("stage1_caught_up_s")
    out = {
        "workers": workers,
        "app_id": app_id,
        "env": env or {},
        "cap_s": cap,
        "complete": complete,
        "ready_s": ready,
        "first_event_s": round(t_first, 2),
        "count_at_first_observation": n_first,
        "end_s": round(t_end, 2),
        "counted": counted,
        "rate_from_start": round(counted / t_end),
        "rate_from_first": round((counted - n_first) / busy) if busy > 0 else None,
        "stage1_events": stage1_events,
        "stage1_events_at_s": round(stage1_at, 2),
        # Into stage-1 state: from the first event until stage 1 had committed all (or what it had).
        "stage1_rate_from_first": round((stage1_done and n or stage1_events) / ((stage1_done or stage1_at) - t_first)),
        "cpu_utilization": [round((c1 - c0) / busy, 2) for c0, c1 in zip(cpu_first, cpu_end)] if busy > 0 else None,
        **stages,
        "late_events": sum(s.late for s in final if s),
        "snapshots": sum(s.snapshots for s in final if s),
        "scrape_p50_ms": round(1000 * (percentile(scrape_s, 50) or 0), 1),
        "scrape_max_ms": round(1000 * max(scrape_s, default=0), 1),
        "scrape_max_bytes": scrape_bytes,
        "rss_mb_at_end": [round(r / 1024) for r, _ in rss],
        "poll_interval_s": a.poll,
        "changelog_mb": changelog_mb(ctx, app_id),
        "messages": topic_messages(ctx, app_id, ["events", "stage1-changelog", "partials"]),
        "samples": samples[:: max(1, len(samples) // 200)],
    }
    if profile and (OUT / "profile.txt").exists():
        out["profile"] = summarize(OUT / "profile.txt")
    return out


def precreate_topics(ctx: Ctx, config: dict[str, Any], app_id: str) -> None:
    """Create the worker's topics up front: workers started together race in ``ensure_topics``
    (the loser exits with TOPIC_ALREADY_EXISTS)."""
    try:
        from kpi_core import config as config_mod
        from kpimon.topics import wanted_topics
        from streams.settings import WorkerSettings

        wanted = wanted_topics(config_mod.from_dict(copy.deepcopy(config)), WorkerSettings(bootstrap=ctx.bootstrap, app_id=app_id))
        create_topics(ctx.bootstrap, wanted)
    except Exception as exc:  # noqa: BLE001 - the workers create what is missing themselves
        log(f"could not pre-create the worker's topics ({type(exc).__name__}: {exc}); the workers will")


def committed_events(ctx: Ctx, app_id: str) -> int:
    """How many source events the stage-1 messages below the group's committed offsets carry."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    topic = f"{app_id}-events"
    admin = KafkaAdminClient(bootstrap_servers=ctx.bootstrap.split(","), client_id="kpimon-bench")
    try:
        committed = admin.list_group_offsets({app_id: None}).get(app_id, {})
    finally:
        admin.close()
    upto = {tp.partition: om.offset for tp, om in committed.items() if tp.topic == topic and om.offset > 0}
    if not upto:
        return 0
    consumer = KafkaConsumer(bootstrap_servers=ctx.bootstrap.split(","), enable_auto_commit=False, group_id=None)
    n = 0
    try:
        tps = [TopicPartition(topic, p) for p in upto]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 120
        while any(consumer.position(tp) < upto[tp.partition] for tp in tps) and time.monotonic() < deadline:
            for tp, recs in consumer.poll(timeout_ms=500).items():
                n += sum(len(orjson.loads(r.value)["e"]) for r in recs if r.offset < upto[tp.partition])
    finally:
        consumer.close()
    return n


def topic_messages(ctx: Ctx, app_id: str, suffixes: list[str]) -> dict[str, int]:
    """How many records each of the app's topics holds (sum of its partitions' end offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=ctx.bootstrap.split(","), enable_auto_commit=False, group_id=None)
    out = {}
    try:
        for suffix in suffixes:
            t = f"{app_id}-{suffix}"
            tps = [TopicPartition(t, p) for p in (consumer.partitions_for_topic(t) or set())]
            out[suffix] = sum(consumer.end_offsets(tps).values()) if tps else 0
    finally:
        consumer.close()
    return out


def changelog_mb(ctx: Ctx, app_id: str) -> dict[str, float]:
    """Size on the broker's disk of the worker's internal topics (local broker only)."""
    if ctx.broker_dir is None:
        return {}
    sizes: dict[str, float] = {}
    for d in (ctx.broker_dir / "storage").glob(f"{app_id}-*"):
        topic = d.name.rsplit("-", 1)[0].removeprefix(app_id + "-")
        sizes[topic] = sizes.get(topic, 0.0) + sum(f.stat().st_size for f in d.glob("*.log")) / 1e6
    return {k: round(v, 1) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]) if v >= 0.1}


def wait_stages(ctx: Ctx, app_id: str, t0: float, timeout: float) -> dict[str, Any]:
    """Seconds (from worker start) until stage 1 and then stage 2 have committed everything sent to them."""
    events_topic, partials_topic = f"{app_id}-events", f"{app_id}-partials"
    lag = GroupLag(ctx.bootstrap, app_id, [events_topic, partials_topic])
    out: dict[str, Any] = {"stage1_caught_up_s": None, "stage2_caught_up_s": None}
    try:
        # Stage 1 is caught up when it has committed the bundles that carried the events, not when
        # <app>-events has no lag at all: the router's heartbeats add a message every 0.5 s, so a
        # zero lag was only ever seen by luck and the "into state" rate depended on it. The target
        # is the end offsets a second after everything was counted (the last bundles are sent by then).
        time.sleep(1.0)
        targets = {tp: end for tp, end in lag.ends().items() if tp.topic == events_topic}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lags = lag.lag(targets)
            t = round(time.monotonic() - t0, 2)
            if out["stage1_caught_up_s"] is None and lags[events_topic] == 0:
                out["stage1_caught_up_s"] = t
            if out["stage1_caught_up_s"] is not None and lags[partials_topic] == 0:
                out["stage2_caught_up_s"] = t
                break
            time.sleep(0.5)
        out["final_lag"] = lag.lag()
    finally:
        lag.close()
    return out


def start_spies(pid: int, seconds: int) -> list[subprocess.Popen[bytes]]:
    exe = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if exe is None:
        log("py-spy not found: no profile (pip install -r bench/requirements.txt)")
        return []
    log(f"py-spy: recording pid {pid} for {seconds}s -> bench/out/profile.svg, bench/out/profile.txt")
    for f in ("profile.svg", "profile.txt", "dump.txt"):
        (OUT / f).unlink(missing_ok=True)
    logf = (OUT / "py-spy.log").open("wb")
    return [
        subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(seconds), "--format", "raw", "--threads",
                          "-o", str(OUT / "profile.txt")], stdout=logf, stderr=subprocess.STDOUT),
        subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(seconds), "--nonblocking",
                          "-o", str(OUT / "profile.svg")], stdout=logf, stderr=subprocess.STDOUT),
    ]


def collect_spies(spies: list[subprocess.Popen[bytes]], pid: int) -> None:
    for s in spies:
        try:
            s.wait(timeout=120)
        except subprocess.TimeoutExpired:
            s.terminate()
    exe = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if exe:
        try:
            dump = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
            (OUT / "dump.txt").write_text(dump.stdout + dump.stderr)
        except subprocess.TimeoutExpired:
            pass


# -- phase 4: scaling ----------------------------------------------------------------


def phase_scaling(ctx: Ctx, results: dict[str, Any]) -> None:
    res = results.setdefault("scaling", {})
    n = preload(ctx)["events"]
    single = (results.get("throughput") or {}).get("worker")
    if single and not ctx.args.scaling_rerun_one:
        res["1"] = {k: v for k, v in single.items() if k not in ("samples", "profile")}
        res["1_note"] = "the throughput phase's run (py-spy attached for part of it)"
    for workers in (1, 2):
        if str(workers) in res:
            continue
        log(f"== scaling: {workers} worker(s) in one group over the {n:,} preloaded events (no profiler)")
        r = measure_workers(ctx, n, workers=workers, label=f"s{workers}", profile=False, cap=ctx.args.scaling_seconds)
        r.pop("samples", None)
        res[str(workers)] = r
        rate = r.get("rate_from_first")
        # None when no event was counted before the cap: report it, don't lose the phase.
        log(f"scaling: {workers} worker(s): " + (f"{rate:,} events/s from the first event" if rate is not None else "no rate (nothing counted before the cap)"))
    one, two = res["1"]["rate_from_first"], res["2"]["rate_from_first"]
    res["speedup"] = round(two / one, 2) if one and two else None


# -- what-if: Faust producer settings through the environment (no code change) -----------------

WHATIF = {
    "producer batches 512 KB": {"PRODUCER_MAX_BATCH_SIZE": "524288"},
    "producer batches 512 KB + gzip": {"PRODUCER_MAX_BATCH_SIZE": "524288", "PRODUCER_COMPRESSION_TYPE": "gzip"},
}


def phase_whatif(ctx: Ctx, results: dict[str, Any]) -> None:
    """One worker with Faust producer settings changed through its environment variables.

    Faust reads ``PRODUCER_MAX_BATCH_SIZE`` and friends from the environment over the values
    ``streams/app.py`` passes, so this measures a candidate fix without touching the code.
    """
    res = results.setdefault("whatif", {})
    n = preload(ctx)["events"]
    chosen = list(WHATIF.items()) if ctx.args.whatif_all else list(WHATIF.items())[:1]
    for i, (name, env) in enumerate(chosen):
        log(f"== what-if: one worker with {name} ({', '.join(f'{k}={v}' for k, v in env.items())})")
        r = measure_workers(ctx, n, workers=1, label=f"x{i}", profile=False, cap=ctx.args.whatif_seconds, env=env)
        r.pop("samples", None)
        res[name] = r
        log(f"what-if {name}: {r['rate_from_first']:,} events/s counted, {r['stage1_rate_from_first']:,} into stage 1")


# -- phase 2: latency ------------------------------------------------------------------


# -- phase: peers (the same per-campaign KPIs in Quix Streams, and in kpimon) -------------------

QUIX_VENV = ROOT / ".cache" / "bench-quix"
QUIX_REQUIREMENT = "quixstreams>=3.20,<4"


def peer_config(ctx: Ctx, app_id: str) -> dict[str, Any]:
    """kpimon doing what the Quix app does: per-campaign 1-minute windows, 10 s lateness, the same KPIs."""
    return {
        "windows": [{"size": "1m"}],
        "allowed_lateness": "10s",
        "idle_timeout": ctx.args.throughput_idle_timeout or "10s",
        "breakdowns": [["campaign"]],
        "measures": {
            "impressions": {"event": "impression"}, "clicks": {"event": "click"},
            "click_cost": {"event": "click", "sum": "cost"}, "pageviews": {"event": "pageview"},
            "leads": {"event": "lead"}, "orders": {"event": "order"}, "revenue": {"event": "order", "sum": "revenue"},
            "spend": {"event": "spend", "sum": "amount"}, "cost": {"add": ["click_cost", "spend"]},
        },
        "kpis": {
            "ctr": {"ratio": ["clicks", "impressions"]}, "cpc": {"ratio": ["click_cost", "clicks"], "direction": "lower"},
            "cpl": {"ratio": ["cost", "leads"], "direction": "lower"}, "cpa": {"ratio": ["cost", "orders"], "direction": "lower"},
            "roas": {"ratio": ["revenue", "cost"]}, "conversion": {"ratio": ["orders", "clicks"]},
        },
        "topics": topics_section(ctx.src, app_id, PARTITIONS),
    }


def quix_python() -> str:
    """The Quix Streams virtualenv's python, created on first use (Quix is not a kpimon dependency)."""
    py = QUIX_VENV / "bin" / "python"
    if not py.exists():
        log(f"creating {os.path.relpath(QUIX_VENV, ROOT)} with {QUIX_REQUIREMENT}")
        subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", QUIX_REQUIREMENT], check=True, timeout=900)
    return str(py)


def phase_peers(ctx: Ctx, results: dict[str, Any]) -> None:
    res = results.setdefault("peers", {})
    n = preload(ctx)["events"]
    py = quix_python()
    res["quix_version"] = subprocess.run([py, "-c", "import quixstreams; print(quixstreams.__version__)"],
                                         capture_output=True, text=True, check=True).stdout.strip()
    log(f"== peers: Quix Streams {res['quix_version']} app, per-campaign 1-minute KPIs over {n:,} events")
    state = ctx.work / "quix-state"
    res["quix"] = run_json(
        [py, str(BENCH_DIR / "peers" / "quix_app.py"), "--bootstrap", ctx.bootstrap, "--group", f"{ctx.prefix}-quix",
         "--expect", str(n), "--state-dir", str(state), "--timeout", str(120 + n / 1_000), *source_topics(ctx.src)],
        timeout=300 + n / 1_000, what="Quix Streams app",
    )
    q = res["quix"]
    log(f"quix: {q['rate_from_first']:,} events/s through its window step; {q['absorbed']:,} absorbed, "
        f"{q['late']:,} dropped as late")
    log(f"== peers: kpimon worker with the same KPIs over {n:,} events")
    res["kpimon"] = measure_workers(ctx, n, workers=1, label="peer", profile=False, config=peer_config)
    k = res["kpimon"]
    res["ratio"] = round(k["stage1_rate_from_first"] / q["rate_from_first"], 2) if q.get("rate_from_first") else None
    log(f"kpimon, same KPIs: {k['stage1_rate_from_first']:,} events/s into state ({res['ratio']}x Quix)")


def iso_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def phase_latency(ctx: Ctx, results: dict[str, Any]) -> None:
    """The brief's rate first (its numbers are the headline), then lower rates, if asked for."""
    a = ctx.args
    res = results.setdefault("latency", {})
    for i, rate in enumerate(a.latency_rates):
        seconds = a.latency_seconds if i == 0 else a.latency_low_seconds
        run: dict[str, Any] = {}
        try:
            latency_run(ctx, run, rate=rate, seconds=seconds, app_id=f"{ctx.prefix}-lat{rate}")
        finally:
            if i == 0:
                res.update(run)
            else:
                res.setdefault("other_rates", {})[str(rate)] = run


def latency_run(ctx: Ctx, res: dict[str, Any], *, rate: int, seconds: int, app_id: str) -> None:
    from tests.support.slack_api import SlackAPIServer

    a = ctx.args
    res["rate"] = rate
    # Lower rates keep the per-campaign volume (and so the alert rule's footing) of the first run.
    scale = rate / a.latency_rates[0]
    campaigns = max(10, round(a.latency_campaigns * scale))
    n_anom = max(2, round(a.latency_anomalies * min(1.0, scale)))
    res["campaigns"] = campaigns
    window_ms, lateness_ms = 10_000, 1_000
    cfg = default_catalogue()
    cfg["windows"] = [{"size": "10s"}]
    cfg.pop("settle_windows", None)  # names the catalogue's 1h window, which this run replaces
    cfg["allowed_lateness"] = "1s"
    cfg["idle_timeout"] = a.idle_timeout
    cfg["topics"] = topics_section(app_id, app_id, PARTITIONS)
    cfg["targets"] = {"ctr": {"value": "1%", "min_denominator": 150, "renotify": "10s"}}
    cfg["alerting"] = {"default_channel": "#kpi-bench"}
    topics = cfg["topics"]
    # Broker append time on the outputs, so a record's timestamp is when Kafka got it.
    append = {"message.timestamp.type": "LogAppendTime"}
    create_topics(ctx.bootstrap, {topics["snapshots"]: PARTITIONS, topics["alerts"]: PARTITIONS},
                  {topics["snapshots"]: append, topics["alerts"]: append})
    # Staggered CTR collapses: each opens an incident in a different window, then reminds every window.
    spread = seconds * 0.6
    anomalies = [f"camp-{i:03d}:0.0:{5 + i * spread / max(1, n_anom):.1f}" for i in range(n_anom)]
    with SlackAPIServer(token=SLACK_TOKEN) as slack:
        mono_to_wall = time.time() - time.monotonic()
        env = {"SLACK_BOT_TOKEN": SLACK_TOKEN, "SLACK_CHANNEL": "#kpi-bench", "SLACK_API_URL": slack.base_url}
        w = WorkerProc(cfg, bootstrap=ctx.bootstrap, app_id=app_id, workdir=ctx.work, env=env, name=app_id)
        log(f"== latency: worker with 10s windows, 1s lateness, idle {a.idle_timeout}; local Slack API at {slack.base_url}")
        w.start()
        try:
            res["worker_ready_s"] = round(w.wait_ready(120), 1)
            log(f"latency: producing ~{rate:,} events/s in real time for {seconds}s "
                f"({campaigns} campaigns, {n_anom} with a CTR collapse)")
            cpu0, t_cpu0 = w.cpu_seconds(), time.monotonic()
            rss_max = 0
            producer = subprocess.Popen(
                [PY, str(BENCH_DIR / "paced.py"), "--bootstrap", ctx.bootstrap, "--prefix", app_id,
                 "--campaigns", str(campaigns), "--events-per-s", str(rate),
                 "--duration", str(seconds), *[x for an in anomalies for x in ("--anomaly", an)]],
                cwd=ROOT, stdout=subprocess.PIPE, text=True,
            )
            deadline = time.monotonic() + seconds + 180
            while producer.poll() is None:
                if time.monotonic() > deadline:
                    producer.kill()
                    raise RuntimeError("the paced producer overran its time")
                w.check_alive()
                rss_max = max(rss_max, w.rss_kb()[0])
                time.sleep(1)
            if producer.returncode != 0:
                raise RuntimeError(f"paced producer failed (exit code {producer.returncode})")
            assert producer.stdout is not None
            res["producer"] = json.loads(producer.stdout.read().strip().splitlines()[-1])
            cpu1, t_cpu1 = w.cpu_seconds(), time.monotonic()
            res["worker_cpu_utilization"] = round((cpu1 - cpu0) / (t_cpu1 - t_cpu0), 2)
            # A worker that fell behind still has windows to close: wait until it has counted
            # everything and both stages have committed, then give the last outputs time to land.
            sent = res["producer"]["sent"]
            deadline = time.monotonic() + a.latency_catchup
            scrape = w.scrape()
            while (scrape is None or scrape.total < sent) and time.monotonic() < deadline:
                w.check_alive()
                time.sleep(1)
                scrape = w.scrape()
            res["worker_caught_up_after_producer_s"] = round(time.monotonic() - t_cpu1, 1) if scrape and scrape.total >= sent else None
            wait_stages(ctx, app_id, time.monotonic(), timeout=max(10.0, deadline - time.monotonic()))
            time.sleep(a.drain_seconds)
            scrape = w.scrape()
            res["worker_counted"] = scrape.total if scrape else None
            res["worker_rss_mb_max"] = round(rss_max / 1024)
        finally:
            w.stop()
        slack_posts = [r for r in slack.requests if r.path == "/api/chat.postMessage"]
        slack_calls = len(slack.requests)
    prod = res["producer"]
    start_ms, end_ms = prod["start_ms"], prod["end_ms"]

    def in_run(start: int, end: int) -> bool:
        # Whole windows only, closed while traffic still flowed (later ones close on the idle timeout).
        return start >= start_ms and end + lateness_ms <= end_ms

    snaps = read_topic(ctx.bootstrap, topics["snapshots"])
    per_record: list[float] = []
    per_window_last: dict[int, float] = {}
    per_window_first: dict[int, float] = {}
    ts_types = {t for _, t, _, _ in snaps}
    for ts, _, _, value in snaps:
        s = orjson.loads(value)
        if s["phase"] != "events":
            continue
        start, end = iso_ms(s["start"]), iso_ms(s["end"])
        if not in_run(start, end):
            continue
        lat = ts - (end + lateness_ms)
        per_record.append(lat)
        per_window_last[start] = max(per_window_last.get(start, -1e18), lat)
        per_window_first[start] = min(per_window_first.get(start, 1e18), lat)
    alerts = read_topic(ctx.bootstrap, topics["alerts"])
    outbox: dict[str, dict[str, Any]] = {}
    for ts, _, _, value in alerts:
        ev = orjson.loads(value)
        outbox[ev["id"]] = {"end": ev["end"], "start": ev["start"], "kind": ev["kind"], "append_ms": ts}
    alert_lat: list[float] = []
    outbox_lat: list[float] = []
    kinds: dict[str, int] = {}
    seen: set[str] = set()
    for r in sorted(slack_posts, key=lambda r: r.at):
        meta = (r.body.get("metadata") or {}).get("event_payload") or {}
        ev_id = meta.get("id")
        if ev_id is None or ev_id in seen or ev_id not in outbox:
            continue
        seen.add(ev_id)
        o = outbox[ev_id]
        if not in_run(o["start"], o["end"]):
            continue
        close = o["end"] + lateness_ms
        alert_lat.append((r.at + mono_to_wall) * 1000 - close)
        outbox_lat.append(o["append_ms"] - close)
        kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1

    def stats(xs: list[float]) -> dict[str, Any]:
        return {"n": len(xs), "p50_ms": _r(percentile(xs, 50)), "p99_ms": _r(percentile(xs, 99)),
                "max_ms": _r(max(xs) if xs else None), "min_ms": _r(min(xs) if xs else None)}

    res.update({
        "window_ms": window_ms,
        "lateness_ms": lateness_ms,
        "idle_timeout": a.idle_timeout,
        "snapshot_timestamp_types": sorted(ts_types),
        "windows_measured": len(per_window_last),
        "snapshot_records": stats(per_record),
        "snapshot_window_first": stats(list(per_window_first.values())),
        "snapshot_window_last": stats(list(per_window_last.values())),
        "close_to_outbox": stats(outbox_lat),
        "close_to_slack": stats(alert_lat),
        "alert_kinds": kinds,
        "outbox_events": len(outbox),
        "slack_requests": slack_calls,
        "slack_posts": len(slack_posts),
    })
    log(f"latency at {rate:,}/s: close->snapshot p50 {res['snapshot_records']['p50_ms']} ms p99 {res['snapshot_records']['p99_ms']} ms; "
        f"close->Slack p50 {res['close_to_slack']['p50_ms']} ms p99 {res['close_to_slack']['p99_ms']} ms "
        f"({len(alert_lat)} alerts)")


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


# -- phase 3: memory ----------------------------------------------------------------------


#: What lets the worker close windows of 10,000 campaigns: stage 1 sends all of a partition's
#: partials for a window in one message (and stage 2 stores a pending window as one value), which
#: passes the 1 MB default request and topic limits at about 2,000 campaigns.
BIG_MESSAGES_ENV = {"PRODUCER_MAX_REQUEST_SIZE": str(32 * 1024 * 1024)}
BIG_TOPIC = {"max.message.bytes": str(32 * 1024 * 1024)}


def phase_memory(ctx: Ctx, results: dict[str, Any]) -> None:
    """As shipped first; if the worker dies, record why and measure again with bigger message limits."""
    res = results.setdefault("memory", {})
    try:
        memory_run(ctx, res, app_id=f"{ctx.prefix}-mem")
        return
    except WorkerDied as died:
        res.clear()
        res["as_shipped_crash"] = {"after_s": died.after_s, "reason": died.reason}
        log(f"memory: the worker died {died.after_s:.0f}s in ({died.reason[:160]}); measuring again with "
            "32 MB message limits")
    workaround: dict[str, Any] = {}
    memory_run(ctx, workaround, app_id=f"{ctx.prefix}-mem2", big_messages=True)
    res.update(workaround)
    res["workaround"] = {"env": BIG_MESSAGES_ENV, "topics": "partials and stage2-changelog created with "
                                                              f"max.message.bytes={BIG_TOPIC['max.message.bytes']}"}


def largest_record(ctx: Ctx, topic: str) -> int:
    """The largest record value in a topic, in bytes."""
    try:
        return max((len(v or b"") for _, _, _, v in read_topic(ctx.bootstrap, topic, timeout=120)), default=0)
    except Exception:  # noqa: BLE001 - informative only
        return 0


class WorkerDied(Exception):
    def __init__(self, after_s: float, reason: str) -> None:
        super().__init__(reason)
        self.after_s = after_s
        self.reason = reason


def crash_reason(w: WorkerProc) -> str:
    """The worker log's first ERROR line (what Faust crashed with)."""
    try:
        lines = w.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "unknown (no worker log)"
    for marker in ("Crashed reason=", "[ERROR]", "Error"):
        for line in lines:
            if marker in line and "Coordinator" not in line:
                return line.strip()[:600]
    return "unknown (see the worker log)"


def memory_run(ctx: Ctx, res: dict[str, Any], *, app_id: str, big_messages: bool = False) -> None:
    a = ctx.args
    cfg = default_catalogue()  # 1m and 1h windows, 10s lateness, every KPI
    cfg["topics"] = topics_section(app_id, app_id, PARTITIONS)
    cfg["targets"] = {"ctr": {"value": "2%", "min_denominator": 100, "confidence": 0.95}}
    env = None
    if big_messages:
        env = dict(BIG_MESSAGES_ENV)
        compact = {"cleanup.policy": "compact", **BIG_TOPIC}
        create_topics(ctx.bootstrap, {f"{app_id}-partials": PARTITIONS, f"{app_id}-stage2-changelog": PARTITIONS},
                      {f"{app_id}-partials": BIG_TOPIC, f"{app_id}-stage2-changelog": compact})
    w = WorkerProc(cfg, bootstrap=ctx.bootstrap, app_id=app_id, workdir=ctx.work, name=app_id, env=env)
    log(f"== memory: {a.memory_campaigns:,} campaigns at ~{a.memory_rate:,} events/s in real time for {a.memory_seconds}s"
        + (" (32 MB message limits)" if big_messages else ""))
    samples: list[tuple[float, int]] = []
    w.start()
    t0 = time.monotonic()
    producer = None

    def check() -> None:
        if not w.alive():
            raise WorkerDied(time.monotonic() - t0, crash_reason(w))

    try:
        res["worker_ready_s"] = round(w.wait_ready(120), 1)
        res["rss_mb_idle"] = round(w.rss_kb()[0] / 1024)
        producer = subprocess.Popen(
            [PY, str(BENCH_DIR / "paced.py"), "--bootstrap", ctx.bootstrap, "--prefix", app_id,
             "--campaigns", str(a.memory_campaigns), "--events-per-s", str(a.memory_rate),
             "--duration", str(a.memory_seconds), "--ctr-low", "0.02", "--ctr-high", "0.06"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + a.memory_seconds + 240
        last_log = time.monotonic()
        while producer.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the paced producer overran its time")
            check()
            samples.append((round(time.monotonic() - t0, 1), w.rss_kb()[0]))
            res["rss_mb_max_sampled"] = round(max(kb for _, kb in samples) / 1024)
            if time.monotonic() - last_log > 15:
                last_log = time.monotonic()
                log(f"memory: RSS {samples[-1][1] / 1024:,.0f} MB at {samples[-1][0]:.0f}s")
            time.sleep(1)
        if producer.returncode != 0:
            raise RuntimeError(f"paced producer failed (exit code {producer.returncode})")
        assert producer.stdout is not None
        res["producer"] = json.loads(producer.stdout.read().strip().splitlines()[-1])
        # Keep sampling while the last windows close on the idle timeout.
        tail_end = time.monotonic() + a.memory_tail
        while time.monotonic() < tail_end:
            check()
            samples.append((round(time.monotonic() - t0, 1), w.rss_kb()[0]))
            time.sleep(1)
        scrape = w.scrape(timeout=120)
        rss, hwm = w.rss_kb()
        res.update({
            "rss_mb_max_sampled": round(max(s for _, s in samples) / 1024),
            "rss_mb_hwm": round(hwm / 1024),
            "rss_mb_end": round(rss / 1024),
            "counted": scrape.total if scrape else None,
            "snapshots": scrape.snapshots if scrape else None,
            "metrics_scrape_s": round(scrape.seconds, 2) if scrape else None,
            "metrics_scrape_mb": round(scrape.bytes / 1e6, 1) if scrape else None,
            "metrics_lines": scrape.lines if scrape else None,
            "samples_mb": [(t, round(kb / 1024)) for t, kb in samples[:: max(1, len(samples) // 60)]],
        })
        res["largest_message_kb"] = {
            t: round(largest_record(ctx, f"{app_id}-{t}") / 1024) for t in ("partials", "stage2-changelog")
        }
        # Growth over the last minute of traffic, to see whether a longer run would keep growing.
        last = [(t, kb) for t, kb in samples if t >= max(0.0, samples[-1][0] - a.memory_tail - 60)]
        if len(last) > 5:
            res["rss_growth_mb_per_min"] = round((last[-1][1] - last[0][1]) / 1024 / ((last[-1][0] - last[0][0]) / 60), 1)
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.wait()
        if samples:
            res["samples_mb"] = res.get("samples_mb") or [(t, round(kb / 1024)) for t, kb in samples[:: max(1, len(samples) // 60)]]
        w.stop()
    log(f"memory: max RSS {res.get('rss_mb_max_sampled')} MB (VmHWM {res.get('rss_mb_hwm')} MB); "
        f"/metrics {res.get('metrics_scrape_mb')} MB in {res.get('metrics_scrape_s')}s")


# -- memory projection: kpi_core state over 35+ minutes of event time ----------------------------


def phase_statemem(ctx: Ctx, results: dict[str, Any]) -> None:
    a = ctx.args
    cfg = default_catalogue()
    cfg["topics"] = topics_section(f"{ctx.prefix}-sm", f"{ctx.prefix}-sm", PARTITIONS)
    cfg["targets"] = {"ctr": {"value": "2%", "min_denominator": 100, "confidence": 0.95}}
    path = ctx.work / "statemem.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log(f"== memory projection: kpi_core alone, {a.memory_campaigns:,} campaigns, {a.statemem_minutes} minutes of event time")
    results["statemem"] = run_json(
        [PY, str(BENCH_DIR / "statemem.py"), "--config", str(path), "--campaigns", str(a.memory_campaigns),
         "--events-per-s", str(a.memory_rate), "--minutes", str(a.statemem_minutes)],
        timeout=60 + a.statemem_minutes * 40, what="memory projection",
    )


# -- late data: the state windows keep while they wait, and throughput ---------------------


def phase_arrival(ctx: Ctx, results: dict[str, Any]) -> None:
    a = ctx.args
    log(f"== late data: waiting and revision state at {a.memory_campaigns:,} campaigns, throughput with and without arrival profiles")
    results["arrival"] = run_json(
        [PY, str(BENCH_DIR / "arrival.py"), "--campaigns", str(a.memory_campaigns), "--hours", "7"],
        timeout=3600, what="late data",
    )


def phase_baselines(ctx: Ctx, results: dict[str, Any]) -> None:
    a = ctx.args
    log(f"== seasonal drift baselines: memory at {a.memory_campaigns:,} campaigns x 3 KPIs")
    results["baselines"] = run_json([PY, str(BENCH_DIR / "baselines.py"), "--campaigns", str(a.memory_campaigns)],
                                    timeout=900, what="baselines")


def phase_replay(ctx: Ctx, results: dict[str, Any]) -> None:
    """``kpimon replay`` of ~2 hours of simulated events (1,000 campaigns, with sessions), timed and profiled."""
    a = ctx.args
    path = ctx.work / "replay.jsonl"
    log(f"== replay: writing {a.replay_events:,} events over 2 h of event time ({a.campaigns} campaigns)")
    res = results["replay"] = run_json([PY, str(BENCH_DIR / "replayfile.py"), "--out", str(path), "--events", str(a.replay_events),
                                        "--campaigns", str(a.campaigns)], timeout=600, what="replay input")
    cmd = [PY, "-m", "kpimon.cli", "replay", str(path), "--format", "jsonl"]
    out = ctx.work / "replay.out"
    with out.open("wb") as f:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ctx.work, stdout=f, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        res["seconds"] = round(time.monotonic() - t0, 1)
    if status != 0:
        raise RuntimeError(f"kpimon replay exited with status {status}")
    res["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)
    res["rss_mb_max"] = round(usage.ru_maxrss / 1024)
    res["outputs"] = sum(1 for _ in out.open("rb"))
    res["rate"] = round(res["events"] / res["seconds"])
    log(f"replay: {res['events']:,} events in {res['seconds']}s ({res['rate']:,}/s), {res['outputs']:,} snapshots and alerts, "
        f"peak RSS {res['rss_mb_max']} MB")
    exe = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if exe and not a.no_profile:
        raw = OUT / "replay-profile.txt"
        subprocess.run([exe, "record", "-r", "50", "-f", "raw", "-o", str(raw), "--", *cmd], cwd=ctx.work,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800, check=False)
        if raw.exists():
            res["profile"] = summarize(raw, top=15)


# -- main ---------------------------------------------------------------------------------

PHASES = {"throughput": phase_throughput, "scaling": phase_scaling, "whatif": phase_whatif,
          "latency": phase_latency, "memory": phase_memory, "statemem": phase_statemem, "arrival": phase_arrival,
          "baselines": phase_baselines, "peers": phase_peers, "replay": phase_replay}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k events and shorter phases")
    ap.add_argument("--events", type=int, help="events to preload (default 1,000,000; 100,000 with --quick)")
    ap.add_argument("--phases", default="throughput,peers,scaling,whatif,latency,memory,statemem,arrival,baselines,replay")
    ap.add_argument("--replay-events", type=int, help="events of the replay phase (default 1,000,000; 200,000 with --quick)")
    ap.add_argument("--campaigns", type=int, default=1000, help="campaigns in the preloaded mix")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-compute", action="store_true", help="skip the kpi_core-alone measurement")
    ap.add_argument("--profile-seconds", type=int)
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between /metrics polls")
    ap.add_argument("--worker-seconds", type=int, help="cap on a throughput run, from its first event (default 150; 90 quick)")
    ap.add_argument("--scaling-seconds", type=int, help="cap on each scaling run (default 120; 60 quick)")
    ap.add_argument("--scaling-rerun-one", action="store_true", help="measure one worker again instead of reusing phase 1")
    ap.add_argument("--whatif-seconds", type=int, help="cap on each what-if run (default 100; 60 quick)")
    ap.add_argument("--whatif-all", action="store_true", help="also try gzip compression (slower; see the docs)")
    ap.add_argument("--stage-timeout", type=float, default=240, help="seconds to wait for stages 1 and 2 to catch up")
    ap.add_argument("--throughput-idle-timeout", default="", help="idle_timeout of the throughput workers (default: 10s)")
    ap.add_argument("--latency-rates", default="5000,20000",
                    help="events/s of the latency runs; the first is the headline (default 5000,20000)")
    ap.add_argument("--latency-seconds", type=int, help="length of the first latency run (default 60; 30 quick)")
    ap.add_argument("--latency-low-seconds", type=int, help="length of the other latency runs (default 40; 30 quick)")
    ap.add_argument("--latency-campaigns", type=int, default=100)
    ap.add_argument("--latency-anomalies", type=int, default=10)
    ap.add_argument("--idle-timeout", default="2s", help="idle_timeout of the latency worker")
    ap.add_argument("--drain-seconds", type=float, default=10)
    ap.add_argument("--latency-catchup", type=float, default=240, help="seconds to let a lagging worker catch up")
    ap.add_argument("--memory-campaigns", type=int, default=10_000)
    ap.add_argument("--memory-rate", type=int, default=1000)
    ap.add_argument("--memory-seconds", type=int)
    ap.add_argument("--memory-tail", type=int, default=20)
    ap.add_argument("--statemem-minutes", type=int, help="event-time minutes of the memory projection (default 34; 8 quick)")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    a = ap.parse_args()
    a.events = a.events or (100_000 if a.quick else 1_000_000)
    a.replay_events = a.replay_events or (200_000 if a.quick else 1_000_000)
    a.profile_seconds = a.profile_seconds or (15 if a.quick else 30)
    a.worker_seconds = a.worker_seconds or (90 if a.quick else 150)
    a.scaling_seconds = a.scaling_seconds or (60 if a.quick else 120)
    a.whatif_seconds = a.whatif_seconds or (60 if a.quick else 100)
    a.latency_seconds = a.latency_seconds or (30 if a.quick else 60)
    a.latency_low_seconds = a.latency_low_seconds or (30 if a.quick else 40)
    a.latency_rates = [int(x) for x in str(a.latency_rates).split(",") if x.strip()]
    a.memory_seconds = a.memory_seconds or (90 if a.quick else 120)
    a.statemem_minutes = a.statemem_minutes or (8 if a.quick else 34)
    phases = [p.strip() for p in a.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        ap.error(f"unknown phases {unknown}; choose from {', '.join(PHASES)}")

    OUT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(OUT / "tmp", ignore_errors=True)  # the previous run's worker logs and data
    results: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(PY).name, *[os.path.relpath(sys.argv[0], ROOT)], *sys.argv[1:]]),
        "quick": a.quick,
        "params": {k: v for k, v in vars(a).items() if k != "doc"},
        "machine": machine_info(),
        "git": git_state(),
        "errors": {},
    }
    t_all = time.monotonic()
    with broker() as (bootstrap, broker_version):
        results["versions"] = versions(broker_version)
        results["external_broker"] = bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
        ctx = Ctx(a, bootstrap)
        if not results["external_broker"]:
            ctx.broker_dir = ROOT / ".cache" / "kafka" / f"bench-{os.getpid()}"
        try:
            for name in phases:
                t = time.monotonic()
                load0, (busy0, total0) = loadavg(), cpu_times()
                results.setdefault("git_by_phase", {})[name] = git_state()
                try:
                    PHASES[name](ctx, results)
                except Exception as exc:  # noqa: BLE001 - one failed phase must not lose the others
                    log(f"phase {name} failed: {exc}")
                    results["errors"][name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()[-3000:]
                    traceback.print_exc()
                results.setdefault("durations_s", {})[name] = round(time.monotonic() - t, 1)
                busy1, total1 = cpu_times()
                results.setdefault("machine_load", {})[name] = {
                    "loadavg_start": load0, "loadavg_end": loadavg(),
                    "machine_cpu_busy": round((busy1 - busy0) / (total1 - total0), 2) if total1 > total0 else None,
                }
                save(results, a)
        finally:
            if results["external_broker"]:
                log(f"deleted {delete_topics(bootstrap, ctx.prefix)} topics of this run")
    results["total_s"] = round(time.monotonic() - t_all, 1)
    save(results, a)
    log(f"done in {results['total_s']:.0f}s; wrote {os.path.relpath(a.doc, ROOT)} and bench/out/results.json")
    if results["errors"]:
        sys.exit(1)


def git_state() -> str:
    """The commit measured, and whether product files (outside bench/ and docs/) differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                                timeout=30).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line[3:] for line in status if not line[3:].startswith(("bench/", "docs/benchmarks.md"))]
    return head + (f" + uncommitted changes in {len(changed)} files" if changed else "")


def save(results: dict[str, Any], a: argparse.Namespace) -> None:
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=str))
    Path(a.doc).write_text(report.render(results))


if __name__ == "__main__":
    main()
