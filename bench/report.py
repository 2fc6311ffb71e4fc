"""Render bench/out/results.json as docs/benchmarks.md.

The tables are generated from the measurements; the prose under "What the profile showed"
and "Suggestions" comes from bench/analysis.md (written by a person after reading a run),
included as it is.

    .venv/bin/python bench/report.py [results.json] [out.md]   # re-render without running anything
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
TARGET_RATIO = 0.5
TARGET_ALERT_P99_MS = 1000
TARGET_RSS_MB = 1024


def _n(x: Any, unit: str = "") -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not x.is_integer():
        return f"{x:,.1f}{unit}"
    return f"{int(x):,}{unit}"


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def _ok(good: bool | None) -> str:
    return "–" if good is None else ("met" if good else "**missed**")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def render(r: dict[str, Any]) -> str:
    m, v = r.get("machine", {}), r.get("versions", {})
    lines = [
        "# Benchmarks",
        "",
        "Issue: *Fast — within reach of the raw Kafka consumer, measured side by side.* This file is written by "
        "`make bench` (`bench/run.py`); raw numbers are in `bench/out/results.json`, worker logs and the py-spy "
        "profile in `bench/out/` (not committed). Re-run it after a change and compare.",
        "",
        f"- **Run:** {r.get('started', '?')}{' (quick mode)' if r.get('quick') else ''}, "
        f"{_n(r.get('total_s'))} s in all; command `{r.get('command', '?')}`; code at commit `{r.get('git', '?')}`",
        f"- **Machine:** {m.get('nproc', '?')} cores ({m.get('cpu_model', '?')}), {m.get('memory_gib', '?')} GiB RAM, "
        f"{m.get('os', '?')}. The broker, the producers, the benchmark and the worker(s) share these cores.",
        "- **Versions:** " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "- **Broker:** " + ("external (`KAFKA_BOOTSTRAP_SERVERS`)" if r.get("external_broker") else
                            "a private single-node KRaft broker started by the benchmark on free ports (`-Xmx512m`), "
                            "on the same machine"),
    ]
    for sup in r.get("supplements") or []:
        lines.append(f"- **Re-run after the main run:** {', '.join(sup['phases'])}, started {sup.get('started')}, "
                     f"command `{sup.get('command')}`; merged into these results")
    gits = set((r.get("git_by_phase") or {}).values())
    if len(gits) > 1:
        lines.append("- **The code changed during the run** (other engineers commit meanwhile; each worker starts from the "
                     "working tree): " + ", ".join(f"{ph} `{g}`" for ph, g in r["git_by_phase"].items()))
    load = r.get("machine_load") or {}
    if load:
        busy = ", ".join(
            f"{ph} {_pct(x.get('machine_cpu_busy'), 0)} (load {x.get('loadavg_start')}→{x.get('loadavg_end')})"
            for ph, x in load.items()
        )
        lines.append(f"- **Machine busy during each phase** (all processes, including other users'): {busy}. "
                     "Anything well above what the benchmark itself needs means other work shared the machine and "
                     "the absolute rates are low; the side-by-side ratios hold up better.")
    lines.append("")
    lines += _summary(r)
    lines += _throughput(r.get("throughput"), r.get("params", {}))
    lines += _peers(r.get("peers"), r.get("throughput"))
    lines += _scaling(r.get("scaling"))
    lines += _whatif(r.get("whatif"), (r.get("throughput") or {}).get("worker"))
    lines += _latency(r.get("latency"))
    lines += _memory(r.get("memory"), r.get("params", {}))
    lines += _statemem(r.get("statemem"))
    lines += _arrival(r.get("arrival"))
    lines += _baselines(r.get("baselines"))
    lines += _profile(r.get("throughput"))
    lines += _replay(r.get("replay"))
    analysis = BENCH_DIR / "analysis.md"
    if analysis.exists():
        lines += [analysis.read_text().rstrip(), ""]
    if r.get("errors"):
        lines += ["## Phases that failed", ""]
        for phase, err in r["errors"].items():
            lines += [f"- **{phase}:** `{err.splitlines()[-1][:300]}`"]
        lines.append("")
    lines += [
        "## How to run",
        "",
        "```sh",
        "make bench                                        # everything, ~20-25 min; rewrites this file",
        "make bench BENCH_ARGS=--quick                     # 100k events, short phases (~8-10 min)",
        ".venv/bin/python bench/run.py --phases latency --latency-seconds 120",
        ".venv/bin/python bench/run.py --help              # every knob",
        "KAFKA_BOOTSTRAP_SERVERS=host:9092 make bench      # a real cluster (the run's topics are deleted after)",
        "```",
        "",
        "Phases: `throughput` (preload, raw consumer, kpi_core alone, one profiled worker), `scaling` (two workers), "
        "`whatif` (one worker with Faust producer settings changed through the environment), `latency`, `memory`, "
        "`statemem` (the memory projection, ~7 min). "
        "A benchmark is not a test: `make test` never runs it.",
        "",
    ]
    return "\n".join(lines)


def _peers(pe: dict[str, Any] | None, tp: dict[str, Any] | None) -> list[str]:
    if not pe or not pe.get("quix"):
        return []
    q, k = pe["quix"], pe.get("kpimon") or {}
    ceiling = ((tp or {}).get("ceiling") or {}).get("rate_from_first")
    n = q.get("processed") or q["absorbed"] + q["late"]
    rows = [
        [f"Quix Streams {pe.get('quix_version')} (`bench/peers/quix_app.py`: re-keyed by campaign through one topic, tumbling 1 min, "
         "10 s grace, RocksDB)", f"**{_n(q.get('rate_from_first'))}**", _n(q.get("absorbed")),
         f"{_n(q.get('late'))} ({_pct(q['late'] / n if n else None)})", _pct(q["rate_from_first"] / ceiling if ceiling else None)],
    ]
    if k:
        rows.append(["kpimon worker, the same KPIs (`peer_config` in `bench/run.py`)", f"**{_n(k.get('stage1_rate_from_first'))}**",
                     _n(k.get("stage1_events")), _n(k.get("late_events")),
                     _pct(k["stage1_rate_from_first"] / ceiling if ceiling else None)])
    return [
        "## 1b. Peers: the same per-campaign KPIs in Quix Streams",
        "",
        "Both read the preloaded topics above from the start, in fresh consumer groups: per-campaign 1-minute windows "
        "of impressions, clicks, click cost, page views, leads, orders, revenue and spend, with CTR, CPC, CPL, CPA, ROAS "
        "and conversion per closed window, event time from each event's `ts`, 10 s of lateness. Quix runs in its own "
        "virtualenv (`.cache/bench-quix`), created by the benchmark. Rates are events per second from the first "
        "event: for Quix, every event that reached its window step (absorbed or dropped as late); for kpimon, "
        "events absorbed into stage-1 state (kpimon drops none as late here).",
        "",
        _table(["app", "events/s", "absorbed", "dropped as late", "of raw"], rows),
        "",
        f"kpimon ÷ Quix: **{pe.get('ratio')}×** (goal ≥ 5×)." if pe.get("ratio") else "",
        "",
    ]


def _summary(r: dict[str, Any]) -> list[str]:
    tp, lat, mem = r.get("throughput") or {}, r.get("latency") or {}, r.get("memory") or {}
    ratio, s1ratio = tp.get("ratio_from_first"), tp.get("stage1_ratio")
    p99 = (lat.get("close_to_slack") or {}).get("p99_ms")
    rss = mem.get("rss_mb_hwm")
    rows = [
        ["worker throughput ÷ raw consumer (events counted on `/metrics`)", f"≥ {TARGET_RATIO:.0%}", _pct(ratio, 2),
         _ok(None if ratio is None else ratio >= TARGET_RATIO)],
        ["worker throughput ÷ raw consumer (events absorbed into stage-1 state)", f"≥ {TARGET_RATIO:.0%}", _pct(s1ratio, 2),
         _ok(None if s1ratio is None else s1ratio >= TARGET_RATIO)],
        ["window close → alert delivered to Slack, p99", f"< {TARGET_ALERT_P99_MS:,} ms", _n(p99, " ms"),
         _ok(None if p99 is None else p99 < TARGET_ALERT_P99_MS)],
        ["worker peak RSS, 10,000 active campaigns (a 2-minute real-time run)", f"< {TARGET_RSS_MB:,} MB",
         _n(rss, " MB"), _ok(None if rss is None else rss < TARGET_RSS_MB)],
    ]
    pe = r.get("peers") or {}
    q, kp = pe.get("quix") or {}, pe.get("kpimon") or {}
    if q.get("rate_from_first") and kp.get("stage1_rate_from_first"):
        x = kp["stage1_rate_from_first"] / q["rate_from_first"]
        rows.append(["the same per-campaign KPIs ÷ Quix Streams (1b), into state", "≥ 5×", f"{x:.2f}×", _ok(x >= 5)])
    fast = (lat.get("other_rates") or {}).get("20000") or (lat if lat.get("rate") == 20000 else {})
    p99_fast = (fast.get("close_to_slack") or {}).get("p99_ms")
    if fast:
        rows.append(["window close → Slack, p99 at 20,000 events/s", f"< {TARGET_ALERT_P99_MS:,} ms", _n(p99_fast, " ms"),
                     _ok(None if p99_fast is None else p99_fast < TARGET_ALERT_P99_MS)])
    rp = r.get("replay") or {}
    if rp.get("seconds"):
        rows.append([f"`kpimon replay` of {_n(rp['events'])} events (2 h, {_n(rp.get('campaigns'))} campaigns, sessions; 7)",
                     "< 10 s", f"{rp['seconds']} s", _ok(rp["seconds"] < 10)])
    proj = _projection(r)
    if proj is not None:
        rows.append(["the same after 30+ minutes, projected (kpi_core state plateau + the worker's idle RSS + its "
                     "table copy; see 5b)", f"< {TARGET_RSS_MB:,} MB", f"~{_n(proj)} MB", _ok(proj < TARGET_RSS_MB)])
    out = ["## Summary", "", _table(["target", "goal", "measured", ""], rows), ""]
    facts = []
    if tp.get("ceiling"):
        facts.append(f"raw consumer **{_n(tp['ceiling']['rate_from_first'])}** events/s")
    if tp.get("compute"):
        facts.append(f"kpi_core alone (no Kafka, one core) **{_n(tp['compute']['pipeline_rate'])}**")
    if tp.get("worker"):
        w = tp["worker"]
        facts.append(f"one worker **{_n(w['rate_from_first'])}** counted, **{_n(w['stage1_rate_from_first'])}** into state")
    sc = r.get("scaling") or {}
    if sc.get("2"):
        facts.append(f"two workers {_n(sc['2']['rate_from_first'])} counted, {_n(sc['2']['stage1_rate_from_first'])} into state")
    if facts:
        out += ["Events per second: " + "; ".join(facts) + ".", ""]
    return out


def _projection(r: dict[str, Any]) -> float | None:
    sm, mem = r.get("statemem") or {}, r.get("memory") or {}
    peak = sm.get("peak") or {}
    if not peak or not mem.get("rss_mb_idle"):
        return None
    return round(peak["rss_mb"] - sm.get("baseline_rss_mb", 0) + mem["rss_mb_idle"] + peak.get("stored_mb", 0))


def _throughput(t: dict[str, Any] | None, p: dict[str, Any]) -> list[str]:
    if not t or not t.get("preload"):
        return []
    pre, ceil, w, comp = t.get("preload") or {}, t.get("ceiling") or {}, t.get("worker") or {}, t.get("compute") or {}
    mix = ", ".join(f"{k} {_n(c)}" for k, c in sorted((pre.get("per_type") or {}).items(), key=lambda kv: -kv[1]))
    out = [
        "## 1. Throughput: the worker against the raw consumer",
        "",
        f"**Input.** {_n(pre.get('events'))} simulated events (`kpimon.simulator`, {_n(pre.get('campaigns'))} campaigns at "
        f"{pre.get('rate_per_campaign')} impressions/s each, run 2 minutes ahead so sessions, leads and orders are in "
        f"full flow; event times spread over the last {(pre.get('event_time_span_s') or 0) / 60:.1f} minutes; "
        f"{_n(pre.get('bytes_per_event'))} bytes of JSON per event) in the 7 source topics, 4 partitions each. "
        f"Mix: {mix}.",
        "",
        f"**Preload** (kafka-python, `linger_ms=50`, `batch_size=256k`, `acks=1`, no compression; not part of any rate): "
        f"generating {pre.get('generate_s')} s, producing {pre.get('produce_s')} s ({_n(pre.get('produce_rate'))} events/s).",
        "",
        "**Ceiling.** Two plain consumers, each in a fresh group with default fetch settings, on the 7 topics: "
        "`AIOKafkaConsumer.getmany()` in a loop, and confluent-kafka's (librdkafka) `Consumer.consume(10000)`; "
        "`orjson.loads` on every value, timed to the last message. The ceiling is the faster of the two.",
        "",
        "**Worker.** A real `kpimon worker` process (fresh app id) with the full default catalogue "
        "(`kpi_core/default.yaml`: 1m and 1h windows, 10 s lateness, 10 s idle timeout, 27 measures, 36 KPIs, breakdowns "
        "campaign / channel / device / total), memory store, alert evaluation on (`ctr` target 2%, `min_denominator` 100, "
        f"95% confidence; console delivery). Timed by polling `/metrics` every {p.get('poll')} s until "
        "`kpimon_events_total` (all types) + `kpimon_events_invalid_total` reaches N, or until "
        f"{p.get('worker_seconds')} s after its first event (then the rate is over what it got through). Because the "
        "router's counter runs far ahead of the state, the benchmark also measures what stage 1 had *absorbed*: the "
        "events carried by the `<app>-events` messages below the worker's committed offsets (when everything was counted: "
        "the time until the group had committed everything on `<app>-events` and `<app>-partials`). py-spy sampled the "
        f"worker for {p.get('profile_seconds')} s from its first event.",
        "",
    ]
    ceiling = ceil.get("rate_from_first") or 0
    readers = t.get("ceilings") or {ceil.get("client", "aiokafka"): ceil}
    rows = [[f"raw {client} consumer + `orjson.loads`" + (" (the ceiling)" if c is ceil or c == ceil else ""),
             f"**{_n(c.get('rate_from_first'))}**", _n(c.get("rate_from_start")),
             f"first message at {c.get('start_to_first_s')} s, last at {c.get('start_to_last_s')} s",
             _pct(c["rate_from_first"] / ceiling if ceiling else None)]
            for client, c in readers.items()]
    if comp:
        rows.append(["kpi_core alone: `events.decode` (one core, no Kafka)", _n(comp.get("decode_rate")), "–",
                     f"{_n(comp.get('events'))} events", _pct(comp["decode_rate"] / ceiling if ceiling else None)])
        rows.append(["kpi_core alone: `decode` + `LocalPipeline` (both stages, as `kpimon replay`)",
                     _n(comp.get("pipeline_rate")), "–", f"{_n(comp.get('outputs'))} snapshots and alerts",
                     _pct(comp["pipeline_rate"] / ceiling if ceiling else None)])
    if w:
        ready = ", ".join(f"{s} s" for s in (w.get("ready_s") or {}).values())
        how = "all counted" if w.get("complete") else f"cap reached with {_n(w.get('counted'))} counted"
        rows.append(["**kpimon worker**, events counted on `/metrics` (router)", f"**{_n(w.get('rate_from_first'))}**",
                     _n(w.get("rate_from_start")), f"ready {ready}, first event {w.get('first_event_s')} s, "
                     f"{how} at {w.get('end_s')} s", f"**{_pct(t.get('ratio_from_first'), 2)}**"])
        s1 = (f"all absorbed (stage 1 committed) at {w.get('stage1_caught_up_s')} s, stage 2 at "
              f"{w.get('stage2_caught_up_s')} s" if w.get("stage1_caught_up_s")
              else f"{_n(w.get('stage1_events'))} absorbed at {w.get('stage1_events_at_s')} s")
        rows.append(["**kpimon worker**, events absorbed into stage-1 state", f"**{_n(w.get('stage1_rate_from_first'))}**",
                     "–", s1, f"**{_pct(t.get('stage1_ratio'), 2)}**"])
    out += [_table(["reader", "events/s (first event → end)", "events/s (process start → end)",
                    "timeline (s after process start)", "of raw"], rows), ""]
    if w:
        cl = w.get("changelog_mb") or {}
        cl_txt = ", ".join(f"`{k}` {v} MB" for k, v in list(cl.items())[:6])
        out += [
            f"Worker CPU while busy: {', '.join(_pct(u, 0) for u in (w.get('cpu_utilization') or []))} of one core "
            "(a Python worker runs on one core; under 100% means it waits, for Kafka). "
            f"Late events: {_n(w.get('late_events'))}. Snapshots published: {_n(w.get('snapshots'))}. RSS at the end: "
            f"{w.get('rss_mb_at_end')} MB. `/metrics` scrape p50 {w.get('scrape_p50_ms')} ms, max "
            f"{w.get('scrape_max_ms')} ms.",
            "",
            f"**What the worker wrote to Kafka** during the run (the broker's log sizes): {cl_txt}. The input was "
            f"{_n((pre.get('bytes_per_event') or 0) * (w.get('counted') or 0) / 1e6)} MB of JSON.",
            "",
        ]
        msgs = w.get("messages") or {}
        counted = w.get("counted") or 0
        if msgs.get("events") and counted:
            out += [
                f"Records: `<app>-events` {_n(msgs.get('events'))} (one per stage-1 partition per router batch: "
                f"{counted / msgs['events']:,.0f} events each on average), `stage1-changelog` "
                f"{_n(msgs.get('stage1-changelog'))} ({(msgs.get('stage1-changelog') or 0) / counted:.2f} per event counted), "
                f"`partials` {_n(msgs.get('partials'))}.",
                "",
            ]
    sw = comp.get("state_writes") if comp else None
    if sw:
        rows = []
        for key, x in sw.items():
            if not key.startswith("every_"):
                continue
            k = int(key.split("_", 1)[1])
            rows.append([f"after every {'' if k == 1 else f'{k}th '}bundle", x.get("records_per_event"),
                         _n(x.get("bytes_per_event")),
                         _n(x["bytes_per_event"] / x["records_per_event"]) if x.get("records_per_event") else "–",
                         _pct(x.get("sketch_share"), 0)])
        out += [
            "**Stage-1 state writes, measured in-process** (`bench/compute.py`: the same kind of events, router batches "
            f"of {_n(sw.get('router_batch'))} split over {sw.get('partitions')} stage-1 aggregators, `changes()` stored "
            "after every bundle or after every 8th; the worker stores once per step of up to 64 bundles):",
            "",
            _table(["stored", "changelog records per event", "bytes per event", "bytes per record",
                    "share of bytes that are HLL registers"], rows),
            "",
        ]
    return out


def _scaling(s: dict[str, Any] | None) -> list[str]:
    if not s or "2" not in s:
        return []
    rows = []
    for k in ("1", "2"):
        x = s.get(k)
        if not x:
            continue
        rows.append([k, _n(x.get("rate_from_first")), _n(x.get("stage1_rate_from_first")),
                     ", ".join(_pct(u, 0) for u in (x.get("cpu_utilization") or [])),
                     f"{x.get('cap_s')} s" + ("" if x.get("complete") else " (cap reached)"),
                     ", ".join(f"{v} s" for v in (x.get("ready_s") or {}).values())])
    one, two = (s.get("1") or {}), (s.get("2") or {})
    sp_s1 = (two.get("stage1_rate_from_first") or 0) / one["stage1_rate_from_first"] if one.get("stage1_rate_from_first") else None
    return [
        "## 2. Scaling: one worker and two",
        "",
        "The same preloaded topics and config, a fresh app id per run; the two workers start together in one consumer "
        "group and `/metrics` of both are summed. "
        + (f"The one-worker row is {s['1_note']}. " if s.get("1_note") else "")
        + "**The machine has 2 cores and also runs the broker** (and the benchmark's poller): two workers compete with "
        "Kafka for CPU, so this shows whether the partitioned design spreads the work, not what two machines would do.",
        "",
        _table(["workers", "events/s counted", "events/s into stage-1 state", "CPU per worker while busy", "cap",
                "ready after"], rows),
        "",
        f"Speed-up with two: **{s.get('speedup')}×** counted, **{sp_s1:.2f}×** into state." if sp_s1 else
        f"Speed-up with two: **{s.get('speedup')}×**.",
        "",
    ]


def _whatif(wi: dict[str, Any] | None, base: dict[str, Any] | None) -> list[str]:
    if not wi:
        return []
    def per_msg(x: dict[str, Any]) -> str:
        m, c = x.get("messages") or {}, x.get("counted") or 0
        if not m.get("events") or not c:
            return "–"
        return f"{c / m['events']:,.0f} / {(m.get('stage1-changelog') or 0) / c:.2f}"

    rows = []
    if base:
        rows.append(["as shipped (phase 1)", "–", _n(base.get("rate_from_first")), _n(base.get("stage1_rate_from_first")),
                     ", ".join(_pct(u, 0) for u in (base.get("cpu_utilization") or [])),
                     _n((base.get("changelog_mb") or {}).get("stage1-changelog")), per_msg(base)])
    for name, x in wi.items():
        env = ", ".join(f"`{k}={v}`" for k, v in (x.get("env") or {}).items())
        rows.append([name, env, _n(x.get("rate_from_first")), _n(x.get("stage1_rate_from_first")),
                     ", ".join(_pct(u, 0) for u in (x.get("cpu_utilization") or [])),
                     _n((x.get("changelog_mb") or {}).get("stage1-changelog")), per_msg(x)])
    return [
        "## 3. What-if: Faust producer settings (no code change)",
        "",
        "Faust reads its settings from environment variables over what `streams/app.py` passes, so a candidate fix "
        "for the producer can be measured without touching the code: one worker, same topics and config, capped like "
        "the others.",
        "",
        _table(["worker", "environment", "events/s counted", "events/s into stage-1 state", "CPU while busy",
                "stage1-changelog MB on disk", "events per stage-1 message / changelog records per event"], rows),
        "",
    ]


def _latency(lat: dict[str, Any] | None) -> list[str]:
    if not lat or "close_to_slack" not in lat:
        return []
    prod = lat.get("producer") or {}

    def row(name: str, s: dict[str, Any]) -> list[Any]:
        return [name, _n(s.get("n")), _n(s.get("p50_ms")), _n(s.get("p99_ms")), _n(s.get("max_ms"))]

    caught = lat.get("worker_caught_up_after_producer_s")
    return [
        "## 4. Latency: window close → snapshot, window close → Slack",
        "",
        f"A paced producer (`bench/paced.py`: the simulator, run 2 minutes ahead, each event sent when the wall clock "
        f"reaches its event time) sent {_n(prod.get('sent'))} events in "
        f"{_n(round((prod.get('end_ms', 0) - prod.get('start_ms', 0)) / 1000))} s ({_n(prod.get('achieved_rate'))} "
        f"events/s over {prod.get('campaigns')} campaigns; it fell behind its schedule by p99 "
        f"{prod.get('send_behind_p99_ms')} ms, max {prod.get('send_behind_max_ms')} ms). The worker: the full catalogue "
        f"with 10 s windows, 1 s allowed lateness and `idle_timeout` {lat.get('idle_timeout')}; `ctr` target 1% "
        f"(`min_denominator` 150, `renotify` 10s); {len(prod.get('anomalies') or [])} campaigns' CTR collapses to 0 at "
        "staggered times, so incidents open in several windows and remind in the ones after. Alerts go through slack-sdk "
        "to the local Slack Web API (`tests/support/slack_api.py`, run inside the benchmark process).",
        "",
        "In real time event time ≈ wall time, so window `[start, end)` closes at wall-clock `end + lateness`. Snapshot "
        "latency = the record's timestamp on the snapshots topic (created with `message.timestamp.type=LogAppendTime`: "
        "the broker's append time) − that close; alert latency = arrival at the Slack server of the `chat.postMessage` "
        "carrying the alert's id − the close of the alert's window. Only whole windows that closed while traffic flowed "
        f"count ({lat.get('windows_measured')} windows).",
        "",
        _table(["from window close to", "n", "p50 ms", "p99 ms", "max ms"], [
            row("each snapshot record", lat.get("snapshot_records") or {}),
            row("a window's first snapshot", lat.get("snapshot_window_first") or {}),
            row("a window's last snapshot", lat.get("snapshot_window_last") or {}),
            row("the alert event in the outbox topic", lat.get("close_to_outbox") or {}),
            row("**the alert delivered to Slack**", lat.get("close_to_slack") or {}),
        ]),
        "",
        f"The worker counted {_n(lat.get('worker_counted'))} of {_n(prod.get('sent'))} events "
        + (f"and caught up {caught} s after the producer stopped. " if caught is not None else
           "and had **not caught up** when the benchmark stopped waiting. ")
        + f"Its CPU while the producer ran: {_pct(lat.get('worker_cpu_utilization'), 0)} of one core; RSS max "
        f"{lat.get('worker_rss_mb_max')} MB. Alert events by kind: {lat.get('alert_kinds')}; outbox "
        f"{lat.get('outbox_events')} events, Slack {lat.get('slack_requests')} requests.",
        "",
    ] + _latency_others(lat)


def _latency_others(lat: dict[str, Any]) -> list[str]:
    others = lat.get("other_rates") or {}
    if not others:
        return []
    rows = []
    for rate, x in [(lat.get("rate"), lat), *others.items()]:
        if not x or "close_to_slack" not in x:
            continue
        prod = x.get("producer") or {}
        sn, sl = x.get("snapshot_records") or {}, x.get("close_to_slack") or {}
        caught = x.get("worker_caught_up_after_producer_s")
        rows.append([_n(prod.get("achieved_rate")), _n(prod.get("campaigns")), f"{_n(sn.get('p50_ms'))} / {_n(sn.get('p99_ms'))}",
                     f"{_n(sl.get('p50_ms'))} / {_n(sl.get('p99_ms'))} (n={sl.get('n')})",
                     _pct(x.get("worker_cpu_utilization"), 0), "–" if caught is None else f"{caught} s"])
    return [
        "The same measurement at other rates (same worker config, a fresh app id and topics each; fewer campaigns at "
        "lower rates, so each keeps the same volume per window and the alert rule the same footing):",
        "",
        _table(["events/s sent", "campaigns", "close → snapshot p50 / p99 ms", "close → Slack p50 / p99 ms", "worker CPU",
                "caught up after the producer stopped"], rows),
        "",
    ]


def _memory(mem: dict[str, Any] | None, p: dict[str, Any]) -> list[str]:
    if not mem:
        return []
    crash = mem.get("as_shipped_crash")
    head = ["## 5. Memory: 10,000 active campaigns", ""]
    if crash:
        head += [
            f"**As shipped, the worker died {crash['after_s']:.0f} s into the run**, when the first 1-minute window "
            f"closed: `{crash['reason'][:400]}`. Stage 1 sends all of a partition's partials for a window in one "
            "message (and stage 2 stores a pending window as one value); with 10,000 campaigns that is ~2,500 "
            "campaigns × ~2 KB (mostly the HyperLogLog registers) per message, past the 1 MB limit of the producer and "
            "of the broker. The numbers below are from a second run with the limits raised "
            f"({', '.join(f'`{k}={v}`' for k, v in ((mem.get('workaround') or {}).get('env') or {}).items())}; "
            f"{(mem.get('workaround') or {}).get('topics')}).",
            "",
        ]
    if "rss_mb_hwm" not in mem:
        return head
    prod = mem.get("producer") or {}
    samples = mem.get("samples_mb") or []
    trace = ", ".join(f"{int(t)} s: {mb}" for t, mb in samples[:: max(1, len(samples) // 12)])
    growth = mem.get("rss_growth_mb_per_min")
    return head + [
        f"The worker with the full default catalogue (1m and 1h windows, 10 s lateness) while the paced producer sent "
        f"{_n(prod.get('sent'))} events in real time ({_n(prod.get('achieved_rate'))} events/s over "
        f"{_n(prod.get('campaigns'))} campaigns: a few events per campaign per minute, so every campaign is in every "
        "1-minute window). `VmRSS` from `/proc/<pid>/status` every second, `VmHWM` (the kernel's peak) at the end.",
        "",
        _table(["", "MB"], [
            ["RSS when ready, before traffic", _n(mem.get("rss_mb_idle"))],
            ["RSS max sampled", _n(mem.get("rss_mb_max_sampled"))],
            ["**VmHWM (peak)**", f"**{_n(mem.get('rss_mb_hwm'))}**"],
            ["RSS at the end", _n(mem.get("rss_mb_end"))],
            ["growth over the last minute, MB/min", _n(growth)],
        ]),
        "",
        f"RSS over time (s after start: MB): {trace}. The worker counted {_n(mem.get('counted'))} of "
        f"{_n(prod.get('sent'))} events and published {_n(mem.get('snapshots'))} snapshots. One `/metrics` scrape at "
        f"the end: {mem.get('metrics_scrape_mb')} MB, {_n(mem.get('metrics_lines'))} lines, {mem.get('metrics_scrape_s')} s.",
        "",
        f"Largest records written (KB): {mem.get('largest_message_kb')} — a window's partials for one stage-1 "
        "partition travel in one message, so this grows with the campaigns per partition (the producer's and the "
        "broker's default limit is 1 MB).",
        "",
        f"The run lasts {p.get('memory_seconds')} s, far less than a worker's life: closed 1-minute windows' cells stay "
        "until `session_timeout` (30 min) after the window, and sessions as long, so the peak above is a floor, not a "
        "plateau — see 5b below.",
        "",
    ]


def _arrival(ar: dict[str, Any] | None) -> list[str]:
    if not ar:
        return []
    ws, tp = ar.get("waiting_state") or {}, ar.get("throughput") or {}
    cells = ", ".join(f"{_n(n)} in {w} windows" for w, n in (ws.get("cells_by_window") or {}).items())
    return [
        "### 5c. Late data: what waiting windows keep, and what it costs",
        "",
        f"`bench/arrival.py` builds the state the built-in arrival profiles keep ({_n(ws.get('campaigns'))} campaigns, "
        f"{ws.get('hours')} h of event time with spend never reported complete, so hourly windows wait the whole "
        f"6 h delay; every spend report restated once): {_n(ws.get('rss_mb'))} MB of RSS growth, {cells}, "
        f"{_n(ws.get('restated_reports'))} restated reports remembered, {_n(ws.get('changelog_mb_written'))} MB "
        "written to the changelog over the run. It fits the 1 GB budget in memory, so no on-disk store is needed; "
        "1-minute windows do not wait (`settle_windows: [1h]`), which is what keeps it small.",
        "",
        f"Throughput of decode + `LocalPipeline` over the simulated mix, built-in config, best of 3: "
        f"{_n(tp.get('with_arrival_ev_s'))} events/s with the arrival profiles, {_n(tp.get('without_ev_s'))} without "
        f"({tp.get('change', 0) * 100:+.1f}%); without `revise_for` {_n(tp.get('without_revisions_ev_s'))} events/s "
        f"(revisions: {tp.get('revisions_change', 0) * 100:+.1f}%).",
        "",
        *_revision_state(ar.get("revision_state")),
    ]


def _revision_state(rs: dict[str, Any] | None) -> list[str]:
    if not rs:
        return []
    return [
        f"**Revision state** (`revise_for`, {rs.get('revise_for_h'):.0f} h in the built-in config), in steady state: "
        f"{_n(rs.get('campaigns'))} campaigns, {rs.get('hours')} h of event time, each hour's spend report two hours "
        f"late so every hour is settled and then kept for revisions. RSS growth of stage 1 and stage 2 together: "
        f"**{_n(rs.get('rss_mb'))} MB**; {_n(rs.get('settled_cells'))} settled cells in {_n(rs.get('settled_windows'))} "
        f"windows, {_n(rs.get('restated_reports'))} restated reports, {_n(rs.get('published_groups'))} published groups "
        f"in {_n(rs.get('published_windows'))} window passes at stage 2. A worker's in-memory changelog tables hold a "
        "serialized copy of the same state on top.",
        "",
    ]


def _baselines(b: dict[str, Any] | None) -> list[str]:
    if not b:
        return []
    return [
        "### 5d. Seasonal drift baselines",
        "",
        f"`bench/baselines.py`: {_n(b.get('campaigns'))} campaigns × 3 KPIs with the default (seasonal) drift rule, "
        f"{b.get('windows')} hourly windows through the alert engine: {_n(b.get('baselines'))} baselines, "
        f"**{_n(b.get('rss_mb'))} MB** of RSS growth with their incidents, {_n(b.get('changelog_bytes_per_baseline'))} bytes "
        f"per baseline in the changelog; {_n(b.get('evaluations_per_s'))} rule evaluations/s. A baseline's size does not grow "
        "with its history (24 hour effects, 7 day effects, a level and a spread).",
        "",
    ]


def _statemem(sm: dict[str, Any] | None) -> list[str]:
    if not sm or not sm.get("rows"):
        return []
    rows = sm["rows"]
    pick = [r for r in rows if r["minute"] in (1, 5, 10, 15, 20, 25, 30, 32, 34, 40, 45)] or rows
    peak = sm.get("peak") or {}
    return [
        "### 5b. Memory projection: kpi_core state over half an hour of event time",
        "",
        f"`bench/statemem.py` feeds the same traffic ({_n(sm.get('campaigns'))} campaigns, "
        f"{_n(sm.get('events_per_s'))} events/s of event time) through `LocalPipeline` (both stages and the alert "
        f"engine, in one process, no Kafka) for {sm.get('minutes')} minutes of event time ({_n(sm.get('events'))} events, "
        f"{sm.get('seconds')} s), and records per simulated minute the process RSS (baseline "
        f"{sm.get('baseline_rss_mb')} MB) and the bytes of the latest serialized value of every state key — what the "
        "worker's memory-store tables hold *on top of* the live objects.",
        "",
        _table(["event-time minute", "RSS MB", "serialized state MB (Faust table copy)", "open windows", "cells",
                "sessions"],
               [[r["minute"], _n(r["rss_mb"]), r["stored_mb"], r["windows"], _n(r["cells"]), _n(r["sessions"])]
                for r in pick]),
        "",
        f"Peak: {_n(peak.get('rss_mb'))} MB RSS at minute {peak.get('minute')}, plus {peak.get('stored_mb')} MB of "
        "serialized copies. A worker would add its idle RSS (~80 MB), Faust's and aiokafka's buffers and the "
        "`/metrics` series on top.",
        "",
    ]


def _profile(t: dict[str, Any] | None) -> list[str]:
    prof = ((t or {}).get("worker") or {}).get("profile")
    if not prof:
        return []
    threads = ", ".join(f"{k} {v}%" for k, v in prof.get("threads") or [])
    return [
        "## Profile of the worker (py-spy, throughput run)",
        "",
        f"{_n(prof.get('samples'))} samples of the worker's main thread (the event loop: agents, Faust, aiokafka, "
        "kpimon), `py-spy record --threads --format raw` at 100 Hz, idle excluded. Threads' shares of all samples: "
        f"{threads or 'not recorded'}. Flame graph: `bench/out/profile.svg`; stacks: `bench/out/profile.txt`.",
        "",
        "**By component** (self: the sampled frame's file; total: anywhere on the stack):",
        "",
        _table(["component", "self %", "total %"],
               [[k, val, dict(prof.get("packages_total") or []).get(k, "–")] for k, val in prof.get("packages_self") or []]),
        "",
        "**Top functions by self time:**",
        "",
        _table(["function (file)", "self %"], [[f"`{k}`", val] for k, val in (prof.get("self") or [])[:20]]),
        "",
        "**Top functions by total time** (below the event loop itself):",
        "",
        _table(["function (file)", "total %"], [[f"`{k}`", val] for k, val in (prof.get("total") or [])
                                                  if val < 95][:20]),
        "",
        "**kpimon's own code by total time:**",
        "",
        _table(["function (file)", "total %"], [[f"`{k}`", val] for k, val in (prof.get("own_total") or [])
                                                  if "kpimon/cli.py" not in k][:15]),
        "",
    ]


def _replay(rp: dict[str, Any] | None) -> list[str]:
    if not rp or not rp.get("seconds"):
        return []
    out = [
        "## 7. `kpimon replay` of 2 hours of events",
        "",
        f"`bench/replayfile.py` writes {_n(rp['events'])} simulated events spanning {_n(rp.get('span_s'))} s of event time "
        f"over {_n(rp.get('campaigns'))} campaigns (impressions, clicks, page views with sessions, leads, orders, hourly "
        "spend reports, surveys); `kpimon replay FILE --format jsonl` runs the full default catalogue over it, one process.",
        "",
        _table(["events", "wall time", "CPU time", "events/s", "snapshots and alerts out", "peak RSS"],
               [[_n(rp["events"]), f"**{rp['seconds']} s**", f"{rp.get('cpu_seconds')} s", _n(rp.get("rate")),
                 _n(rp.get("outputs")), _n(rp.get("rss_mb_max"), " MB")]]),
        "",
    ]
    prof = rp.get("profile")
    if prof:
        out += [
            f"Where the time goes (py-spy, {_n(prof.get('samples'))} samples of a second run; `bench/out/replay-profile.txt`):",
            "",
            _table(["kpimon function (file)", "total %"], [[f"`{k}`", v] for k, v in (prof.get("own_total") or [])
                                                            if "kpimon/cli.py" not in k][:15]),
            "",
            _table(["function (file)", "self %"], [[f"`{k}`", v] for k, v in (prof.get("self") or [])[:12]]),
            "",
        ]
    return out


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else BENCH_DIR / "out" / "results.json"
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else BENCH_DIR.parent / "docs" / "benchmarks.md"
    dst.write_text(render(json.loads(src.read_text())))
    print(f"wrote {dst}")
