"""The ceiling: a plain consumer that reads every source message and orjson-decodes it.

Two clients: aiokafka (pure Python, what Faust and the router use) and confluent-kafka
(librdkafka, C); the ceiling is the faster of the two. Prints JSON: seconds from start to the first and the last message, and the rates. Run by
bench/run.py in its own process, with a fresh group id, against the preloaded topics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import orjson
from aiokafka import AIOKafkaConsumer


async def consume(bootstrap: str, topics: list[str], group: str, expect: int, timeout: float) -> dict[str, float]:
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=True,
    )
    t0 = time.monotonic()
    await consumer.start()
    t_first = None
    n = 0
    decoded_bytes = 0
    try:
        deadline = t0 + timeout
        while n < expect and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for msgs in batches.values():
                if t_first is None and msgs:
                    t_first = time.monotonic()
                for m in msgs:
                    orjson.loads(m.value)
                    decoded_bytes += len(m.value)
                    n += 1
        t_last = time.monotonic()
    finally:
        await consumer.stop()
    return _rates(n, expect, t0, t_first, t_last, decoded_bytes)


def consume_confluent(bootstrap: str, topics: list[str], group: str, expect: int, timeout: float) -> dict[str, float]:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": True})
    t0 = time.monotonic()
    consumer.subscribe(topics)
    t_first = None
    n = 0
    decoded_bytes = 0
    try:
        deadline = t0 + timeout
        while n < expect and time.monotonic() < deadline:
            msgs = consumer.consume(num_messages=10_000, timeout=0.5)
            if t_first is None and msgs:
                t_first = time.monotonic()
            for m in msgs:
                if m.error():
                    continue
                value = m.value()
                orjson.loads(value)
                decoded_bytes += len(value)
                n += 1
        t_last = time.monotonic()
    finally:
        consumer.close()
    return _rates(n, expect, t0, t_first, t_last, decoded_bytes)


def _rates(n: int, expect: int, t0: float, t_first: float | None, t_last: float, decoded_bytes: int) -> dict[str, float]:
    t_first = t_first or t_last
    return {
        "messages": n,
        "complete": n >= expect,
        "start_to_first_s": round(t_first - t0, 3),
        "start_to_last_s": round(t_last - t0, 3),
        "rate_from_start": round(n / (t_last - t0)),
        "rate_from_first": round(n / max(t_last - t_first, 1e-9)),
        "mb_per_s": round(decoded_bytes / max(t_last - t_first, 1e-9) / 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--client", choices=("aiokafka", "confluent"), default="aiokafka")
    ap.add_argument("topics", nargs="+")
    args = ap.parse_args()
    if args.client == "confluent":
        out = consume_confluent(args.bootstrap, args.topics, args.group, args.expect, args.timeout)
    else:
        out = asyncio.run(consume(args.bootstrap, args.topics, args.group, args.expect, args.timeout))
    print(json.dumps({"client": args.client, **out}))


if __name__ == "__main__":
    main()
