"""Preload N simulated events into the source topics as fast as the producer goes; print JSON timings.

Run by bench/run.py in its own process, so the million generated events never sit in the
orchestrator's heap. Event times are spread over the past (start = now - the span N events
take at the simulated rate), as a backlog to catch up on would be.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, source_topics, steady_events, steady_rate  # noqa: E402

from kpimon.producer import message_key  # noqa: E402
from kpimon.simulator import SimConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--campaigns", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=2.0, help="impressions/s per campaign (spreads event time)")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()

    from kafka import KafkaProducer

    cfg = SimConfig(campaigns=args.campaigns, rate=args.rate, seed=args.seed)
    eps = steady_rate(cfg)
    span_s = args.events / eps
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - int(span_s * 1000)
    topic_for = {etype: topic for topic, etype in source_topics(args.prefix).items()}
    log(f"preload: generating {args.events:,} events ({args.campaigns} campaigns, ~{eps:,.0f} events/s of event time, "
        f"spanning the last {span_s / 60:.1f} min)")

    t0 = time.monotonic()
    records: list[tuple[str, bytes | None, bytes, int]] = []
    per_type: dict[str, int] = {}
    for etype, obj in steady_events(cfg, start_ms):
        records.append((topic_for[etype], message_key(obj), orjson.dumps(obj), obj["ts"]))
        per_type[etype] = per_type.get(etype, 0) + 1
        if len(records) >= args.events:
            break
    gen_s = time.monotonic() - t0
    payload_bytes = sum(len(r[2]) for r in records)
    log(f"preload: generated in {gen_s:.1f}s ({payload_bytes / len(records):.0f} bytes/event); producing ...")

    producer = KafkaProducer(
        bootstrap_servers=args.bootstrap.split(","), acks=1, linger_ms=50, batch_size=256 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    failed = 0
    first_error: list[BaseException] = []

    def on_error(exc: BaseException) -> None:
        nonlocal failed
        failed += 1
        if not first_error:
            first_error.append(exc)

    t1 = time.monotonic()
    last = t1
    for i, (topic, key, value, ts) in enumerate(records):
        producer.send(topic, value=value, key=key, timestamp_ms=ts).add_errback(on_error)
        if i % 100_000 == 0 and time.monotonic() - last > 5:
            last = time.monotonic()
            log(f"preload: sent {i:,} ({i / (last - t1):,.0f}/s)")
    producer.flush()
    produce_s = time.monotonic() - t1
    producer.close()
    if failed:
        raise SystemExit(f"{failed} events were not delivered; first error: {first_error[0]!r}")
    log(f"preload: produced {len(records):,} in {produce_s:.1f}s ({len(records) / produce_s:,.0f}/s)")
    print(json.dumps({
        "events": len(records),
        "per_type": per_type,
        "campaigns": args.campaigns,
        "rate_per_campaign": args.rate,
        "event_time_span_s": round(span_s, 1),
        "start_ms": start_ms,
        "end_ms": records[-1][3],
        "generate_s": round(gen_s, 2),
        "produce_s": round(produce_s, 2),
        "produce_rate": round(len(records) / produce_s),
        "bytes_per_event": round(payload_bytes / len(records)),
    }))


if __name__ == "__main__":
    main()
