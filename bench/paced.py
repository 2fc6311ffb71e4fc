"""Produce simulated traffic in real time (event time = wall clock) at a target rate; print JSON stats.

The per-campaign impression rate is calibrated so the whole mix (impressions, clicks, page
views, leads, orders, spend, surveys) comes to ``--events-per-s``. Each event is sent when
the wall clock reaches its event time; how far sending fell behind that is reported, since a
producer that can't keep pace would make the worker's latency look worse than it is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import calibrate, log, percentile, source_topics  # noqa: E402

from kpimon.producer import message_key  # noqa: E402
from kpimon.simulator import Anomaly, SimConfig, generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--campaigns", type=int, required=True)
    ap.add_argument("--events-per-s", type=float, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--ctr-low", type=float, default=0.04)
    ap.add_argument("--ctr-high", type=float, default=0.06)
    ap.add_argument("--anomaly", action="append", default=[], help="CAMPAIGN:FACTOR:START_S (CTR multiplier)")
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()

    try:  # librdkafka keeps up with 20,000 events/s; kafka-python tops out near 9,000 here
        from confluent_kafka import Producer
    except ImportError:
        Producer = None

    ctr = (args.ctr_low, args.ctr_high)
    rate, expected = calibrate(args.campaigns, args.events_per_s, ctr, args.seed)
    cfg = SimConfig(campaigns=args.campaigns, rate=rate, ctr_range=ctr, seed=args.seed)
    anomalies = []
    for spec in args.anomaly:
        name, factor, start_s = spec.split(":")
        anomalies.append(Anomaly(campaign=name, factor=float(factor), start_s=float(start_s)))
    topic_for = {etype: topic for topic, etype in source_topics(args.prefix).items()}
    producer = _producer(args.bootstrap, Producer)
    log(f"paced ({producer.kind}): {args.campaigns} campaigns at {rate:.3f} impressions/s each (~{expected:,.0f} events/s at steady state) "
        f"for {args.duration:.0f}s, {len(anomalies)} anomalies")

    # The simulator starts cold (no sessions, leads or orders under way); run it 2 minutes of
    # event time ahead and send only what follows, so the mix is steady from the first second.
    # Generating the warm-up takes a few seconds, hence the start 10 s from now.
    warmup_s = 120
    # ~100,000 events/s of generation here: at 20,000 events/s the warm-up alone takes ~25 s.
    start_ms = int(time.time() * 1000) + 10_000 + int(warmup_s * expected / 100)
    behind: list[float] = []
    failed = 0
    sent = 0
    last_report = time.monotonic()

    def on_error(_: object) -> None:
        nonlocal failed
        failed += 1

    shifted = [Anomaly(a.campaign, a.kpi, a.factor, a.start_s + warmup_s) for a in anomalies]
    gen_start = start_ms - warmup_s * 1000
    for etype, obj in generate(cfg, start_ms=gen_start, duration_s=warmup_s + args.duration, anomalies=shifted):
        ts = obj["ts"]
        if ts < start_ms:
            continue
        wait_ms = ts - time.time() * 1000
        if wait_ms > 1:
            time.sleep(wait_ms / 1000)
        else:
            behind.append(-wait_ms)
        producer.send(topic_for[etype], orjson.dumps(obj), message_key(obj), ts, on_error)
        sent += 1
        if time.monotonic() - last_report >= 10:
            last_report = time.monotonic()
            elapsed = time.time() - start_ms / 1000
            log(f"paced: {sent:,} sent in {elapsed:.0f}s ({sent / max(elapsed, 1e-9):,.0f}/s)")
    producer.flush()
    end_ms = int(time.time() * 1000)
    elapsed = (end_ms - start_ms) / 1000
    print(json.dumps({
        "sent": sent,
        "failed": failed,
        "campaigns": args.campaigns,
        "rate_per_campaign": round(rate, 4),
        "start_ms": start_ms,
        "end_ms": end_ms,
        "achieved_rate": round(sent / elapsed),
        "send_behind_p99_ms": round(percentile(behind, 99) or 0.0, 1),
        "send_behind_max_ms": round(max(behind, default=0.0), 1),
        "anomalies": args.anomaly,
        "producer": producer.kind,
    }))


class _producer:
    """The same few calls over confluent-kafka (when installed) or kafka-python."""

    def __init__(self, bootstrap: str, confluent: object) -> None:
        self.kind = "confluent-kafka" if confluent is not None else "kafka-python"
        if confluent is not None:
            self._p = confluent({"bootstrap.servers": bootstrap, "acks": 1, "linger.ms": 5})  # type: ignore[operator]
        else:
            from kafka import KafkaProducer

            self._p = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks=1, linger_ms=5)

    def send(self, topic: str, value: bytes, key: bytes | None, ts: int, on_error: object) -> None:
        if self.kind == "kafka-python":
            self._p.send(topic, value=value, key=key, timestamp_ms=ts).add_errback(on_error)
            return
        def report(err: object, _msg: object) -> None:
            if err is not None:
                on_error(err)  # type: ignore[operator]
        while True:
            try:
                self._p.produce(topic, value=value, key=key, timestamp=ts, on_delivery=report)
                break
            except BufferError:  # the local queue is full: let librdkafka send some
                self._p.poll(0.05)
        self._p.poll(0)

    def flush(self) -> None:
        self._p.flush(30) if self.kind == "confluent-kafka" else (self._p.flush(), self._p.close())


if __name__ == "__main__":
    main()
